"""The KL-autoencoder generator loss of LDM (`LPIPSWithDiscriminator`, Rombach et al. 2022), per pixel.

Reduction. LDM sums its NLL over pixels and its KL over latent elements, then averages over the batch:
    L_LDM = sum_{c,h,w} [ r / exp(s) + s ] + kl_weight * sum_{c,h,w} KL          (per image)
We divide the whole thing by the number of pixel elements N = 3*H*W:
    L = mean_{c,h,w} [ r / exp(s) + s ] + kl_weight * sum_{c,h,w} KL / N
so `kl_weight` keeps LDM's meaning (1e-6 in its configs is 1e-6 here) while gradients have the same
scale at every resolution, and clipping thresholds mean something. The adversarial term is invariant to
this choice because the adaptive weight rescales itself.
"""

from __future__ import annotations

import torch

from ldm_vae.config import LossConfig
from ldm_vae.losses.kl import kl_to_standard_normal
from ldm_vae.losses.perceptual import LPIPS


def reconstruction_nll(
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    output_logvar: torch.Tensor | None,
    cfg: LossConfig,
    lpips: LPIPS | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pixel NLL of LDM: (|x - x'| + w_p * LPIPS) / exp(s) + s, averaged (fp32).

    Without an output log-variance (VQ) this is taming's mean(|x - x'| + w_p * LPIPS)."""
    images, reconstruction = images.float(), reconstruction.float()
    error = reconstruction - images
    pixel = error.abs() if cfg.reconstruction == "l1" else error.square()
    per_image = pixel.mean(dim=(1, 2, 3))  # (b,)
    logs = {"train/pixel_loss": per_image.mean().detach()}
    if lpips is not None:
        perceptual = lpips(images, reconstruction)  # (b,), one value per image broadcast over its pixels
        per_image = per_image + cfg.perceptual_weight * perceptual
        logs["train/perceptual_loss"] = perceptual.mean().detach()
    logs["train/rec_loss"] = per_image.mean().detach()
    if output_logvar is None:
        return per_image.mean(), logs
    logvar = output_logvar.float()
    nll = (per_image / logvar.exp() + logvar).mean()
    logs["train/nll"] = nll.detach()
    logs["train/output_logvar"] = logvar.detach()
    return nll, logs


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor, pixels_per_image: int) -> torch.Tensor:
    """LDM's KL, summed over latent elements and averaged over the batch, divided by 3*H*W (fp32)."""
    kl = kl_to_standard_normal(mean.float(), logvar.float())  # (b, c, h, w)
    return kl.sum(dim=(1, 2, 3)).mean() / pixels_per_image
