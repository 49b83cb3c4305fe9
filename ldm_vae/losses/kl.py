"""KL divergence of a diagonal-Gaussian posterior from the standard normal prior.

Kingma & Welling, "Auto-Encoding Variational Bayes" (ICLR 2014), Appendix B: for q = N(mu, sigma^2) and
p = N(0, 1), KL(q || p) = 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) per latent element. LDM (Rombach et al.
2022) uses this term with a tiny weight as a regulariser of the first stage (`kl_weight` 1e-6 against the
per-pixel sum); see `ldm/modules/distributions/distributions.py::DiagonalGaussianDistribution.kl`.
"""

from torch import Tensor


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) in nats, in fp32, same shape as the inputs.

    Elementwise (not reduced) so that the caller picks the reduction; the LDM convention is a sum over
    (c, h, w) and a mean over the batch. `logvar` is expected already clamped (diffusers clamps it to
    [-30, 20] in `DiagonalGaussianDistribution`), so `exp` cannot overflow here.
    """
    assert mean.shape == logvar.shape, f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ"
    mean, logvar = mean.float(), logvar.float()  # (b, c, h, w) latents; fp32 whatever the autocast dtype
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)  # Kingma & Welling 2014, Appendix B
