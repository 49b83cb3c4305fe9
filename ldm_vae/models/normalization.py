"""How an autoencoder's latents are normalised for diffusion, kept in its diffusers config.

diffusers' AutoencoderKL/VQModel carry `scaling_factor`, `shift_factor` and per-channel `latents_mean`/
`latents_std` as config fields the model itself never uses; pipelines apply them. One reader and one writer
here make the training job, the pipeline and the diagnostics agree on `z_model = (z - shift) * scale`.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from torch import Tensor


def latent_shift_and_scale(vae: ModelMixin) -> tuple[Tensor, Tensor]:
    """(shift, scale), float32, each (c, 1, 1) or (1, 1, 1): `z_model = (z - shift) * scale`.

    Per-channel `latents_mean`/`latents_std` take precedence (shift = mean[c], scale = 1 / std[c]), as in
    SDXL-style configs; else `shift_factor` (0 if unset, SD1/2) and `scaling_factor` (SD3/FLUX use both).
    """
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        std = torch.tensor(std, dtype=torch.float64).view(-1, 1, 1)
        return torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1), (1.0 / std).float()
    shift = getattr(config, "shift_factor", None) or 0.0
    return torch.full((1, 1, 1), float(shift)), torch.full((1, 1, 1), float(config.scaling_factor))


def set_latent_normalization(vae: ModelMixin, shift: Tensor, scale: Tensor, per_channel: bool) -> None:
    """Write (shift, scale) ((c, 1, 1) each) into the config, so `latent_shift_and_scale` returns them.

    per_channel: as `latents_mean`/`latents_std` (with scaling_factor 1); else the first entries as
    `scaling_factor` and `shift_factor` (None when the shift is 0).
    """
    if per_channel:
        std = (1.0 / scale.double()).flatten().tolist()
        vae.register_to_config(
            scaling_factor=1.0, shift_factor=None, latents_mean=shift.flatten().tolist(), latents_std=std
        )
        return
    shift_value = shift.flatten()[0].item()
    vae.register_to_config(
        scaling_factor=scale.flatten()[0].item(),
        shift_factor=shift_value if shift_value != 0 else None,
        latents_mean=None,
        latents_std=None,
    )
