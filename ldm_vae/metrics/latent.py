"""Diagnostics of the KL autoencoder's latent posterior: per-channel KL and active units.

Active units follow Burda et al., "Importance Weighted Autoencoders" (ICLR 2016), Section 5.2:
A_u = Cov_x(E_{u ~ q(u|x)}[u]), and a unit is active when A_u > 1e-2. Here a "unit" is a latent channel, and
the variance across samples of the posterior mean is averaged over spatial positions. A channel whose mean
does not depend on the input (a collapsed posterior) carries no information however small its KL looks.
"""

from torch import Tensor

from ldm_vae.losses.kl import kl_to_standard_normal


def kl_per_channel(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL (c,) in nats per latent element of each channel: mean over batch and positions of (b, c, h, w)."""
    return kl_to_standard_normal(mean, logvar).mean(dim=(0, 2, 3))  # (b, c, h, w) -> (c,)


def active_channels(means: Tensor, threshold: float = 1e-2) -> tuple[int, Tensor]:
    """(number of active channels, per-channel variance (c,)) for posterior means (n, c, h, w) of n images.

    The variance is in the units of the unscaled latent (before `scaling_factor`), as in Burda et al. 2016.
    """
    n, c, h, w = means.shape
    assert n >= 2, f"active_channels needs the posterior means of at least 2 images, got {n}"
    variance = means.float().var(dim=0).mean(dim=(1, 2))  # (c, h, w) unbiased over n -> (c,)
    return int((variance > threshold).sum().item()), variance
