"""Diagnostics of the KL autoencoder's latent posterior: per-channel KL, active units, aggregate moments.

Active units follow Burda et al., "Importance Weighted Autoencoders" (ICLR 2016), Section 5.2:
A_u = Cov_x(E_{u ~ q(u|x)}[u]), and a unit is active when A_u > 1e-2. Here a "unit" is a latent channel, and
the variance across samples of the posterior mean is averaged over spatial positions. A channel whose mean
does not depend on the input (a collapsed posterior) carries no information however small its KL looks;
`collapse_warning` turns a falling count into one log line.
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


def collapse_warning(previous_active: int | None, active: int, channels: int) -> str | None:
    """One warning line when the active channels drop below the last count, or first read <= half; else None.

    Called at every log step with the last count (None at the first), it warns once per drop, not again while
    the count stays down; a count that recovers and drops again warns again.
    """
    dropped = previous_active is not None and active < previous_active
    first_and_low = previous_active is None and 2 * active <= channels
    if not (dropped or first_and_low):
        return None
    change = f"fell from {previous_active} to {active}" if dropped else f"is {active}"
    return (
        f"posterior collapse? active latent channels {change} of {channels} (variance of the posterior mean "
        "across the batch <= 1e-2); a lower loss.kl_weight keeps more channels in use"
    )


def latent_moments(mean: Tensor, logvar: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-channel mean (c,) and std (c,) of the aggregate posterior of latents (n, c, h, w), vs. the prior.

    With `logvar` (KL) the std counts the posterior noise too (law of total variance):
    Var[z] = Var[mean] + E[exp(logvar)]; without it (VQ latents, or means alone) it is the std of `mean`.
    After `(z - shift) * scale` a latent space that matches the prior has mean 0 and std 1 in every channel.
    """
    mean = mean.float()
    variance = mean.var(dim=(0, 2, 3), correction=0)  # (c,) over images and positions
    if logvar is not None:
        variance = variance + logvar.float().exp().mean(dim=(0, 2, 3))
    return mean.mean(dim=(0, 2, 3)), variance.sqrt()
