"""The denoising loss of a diffusion model (Ho et al. 2020, eq. 14), with v-prediction (Salimans & Ho
2022) and Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting")."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample weight (b,) that turns the plain eps or v MSE into the Min-SNR-gamma loss.

    Min-SNR weighs the x0-error by min(SNR, gamma). The eps-MSE already carries a factor SNR and the
    v-MSE a factor SNR + 1 (Hang et al. 2023, Sec. 3.4), so they are divided out.
    """
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None,
    min_snr_gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-sample loss (b,)) for clean x0 (b, c, h, w), its noise and timesteps (b,).

    The prediction target follows `scheduler.config.prediction_type`; the MSE is taken in fp32.
    """
    x_t = scheduler.add_noise(x0, noise, timesteps)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    prediction_type = scheduler.config.prediction_type
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
    prediction = unet(x_t, timesteps, class_labels=class_labels).sample
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (b,)
    if min_snr_gamma > 0:
        per_sample = per_sample * min_snr_weight(
            compute_snr(scheduler, timesteps), min_snr_gamma, prediction_type
        )
    return per_sample.mean(), per_sample.detach()
