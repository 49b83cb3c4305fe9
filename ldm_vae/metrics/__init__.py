"""Metrics: image fidelity (PSNR, SSIM, bicubic floor) and latent diagnostics (KL, active units)."""

from ldm_vae.metrics.image import bicubic_baseline, psnr, ssim
from ldm_vae.metrics.latent import active_channels, kl_per_channel
from ldm_vae.metrics.sharpness import sharpness

__all__ = ["active_channels", "bicubic_baseline", "kl_per_channel", "psnr", "sharpness", "ssim"]
