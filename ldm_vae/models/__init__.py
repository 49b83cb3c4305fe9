"""Builders for the diffusers models we train, and the modules that wrap them for training."""

from ldm_vae.models.autoencoder_kl import (
    KLTrainingModule,
    build_autoencoder_kl,
    downsampling_factor_of,
    load_autoencoder_kl,
)

__all__ = ["KLTrainingModule", "build_autoencoder_kl", "downsampling_factor_of", "load_autoencoder_kl"]
