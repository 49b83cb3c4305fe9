"""Loss terms of the LDM first-stage objective (Rombach et al., CVPR 2022, Section 3 and Appendix G) and
of the latent diffusion model trained on its latents."""

from ldm_vae.losses.adaptive import adaptive_weight
from ldm_vae.losses.diffusion import diffusion_loss, draw_timesteps, min_snr_weight, objective_of
from ldm_vae.losses.discriminator import (
    PatchDiscriminator,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from ldm_vae.losses.equivariance import Transform, draw_transform, equivariance_loss, transformed_decode
from ldm_vae.losses.kl import kl_to_standard_normal
from ldm_vae.losses.perceptual import LPIPS, default_heads_path, default_vgg16_path

__all__ = [
    "LPIPS",
    "PatchDiscriminator",
    "Transform",
    "adaptive_weight",
    "default_heads_path",
    "default_vgg16_path",
    "diffusion_loss",
    "draw_timesteps",
    "draw_transform",
    "equivariance_loss",
    "generator_adversarial_loss",
    "hinge_discriminator_loss",
    "kl_to_standard_normal",
    "min_snr_weight",
    "objective_of",
    "transformed_decode",
]
