"""Metrics: image fidelity (PSNR, SSIM, bicubic floor) and latent diagnostics (KL, active units)."""

from ldm_vae.metrics.classifier import (
    SampleClassifier,
    accuracy,
    frechet_distance,
    judge,
    load_classifier,
    save_classifier,
    train_classifier,
)
from ldm_vae.metrics.image import bicubic_baseline, psnr, ssim
from ldm_vae.metrics.latent import active_channels, kl_per_channel
from ldm_vae.metrics.sharpness import sharpness

__all__ = [
    "SampleClassifier",
    "accuracy",
    "active_channels",
    "bicubic_baseline",
    "frechet_distance",
    "judge",
    "kl_per_channel",
    "load_classifier",
    "psnr",
    "save_classifier",
    "sharpness",
    "ssim",
    "train_classifier",
]
