"""Builders for the diffusers models we train (autoencoders, the latent UNet) and their training wrappers."""

from ldm_vae.models.autoencoder_kl import (
    KLTrainingModule,
    build_autoencoder_kl,
    downsampling_factor_of,
    latent_shape,
)
from ldm_vae.models.loading import load_autoencoder
from ldm_vae.models.unet import build_noise_scheduler, build_unet, sampling_scheduler
from ldm_vae.models.vq_model import (
    VQTrainingModule,
    build_vqmodel,
    encode_to_codes,
    export_vqmodel,
    image_to_indices,
    indices_to_image,
)

__all__ = [
    "KLTrainingModule",
    "VQTrainingModule",
    "build_autoencoder_kl",
    "build_noise_scheduler",
    "build_unet",
    "build_vqmodel",
    "downsampling_factor_of",
    "encode_to_codes",
    "export_vqmodel",
    "image_to_indices",
    "indices_to_image",
    "latent_shape",
    "load_autoencoder",
    "sampling_scheduler",
]
