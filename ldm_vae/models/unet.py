"""The latent diffusion model: a diffusers UNet2DModel sized from a config and the latent store's shape."""

from __future__ import annotations

from diffusers import DDPMScheduler, UNet2DModel

from ldm_vae.config import DiffusionConfig, UNetConfig


def build_unet(model: UNetConfig, latent_shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    """UNet2DModel for latents (c, h, w). Class-conditional: `num_classes + 1` embeddings, the last one the
    null class of classifier-free guidance (diffusers' UNet2DModel reserves none; DiT hard-codes 1000)."""
    channels, height, width = latent_shape
    down = tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in model.attention_levels)
    up = tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(model.attention_levels))
    return UNet2DModel(
        sample_size=height if height == width else (height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(model.block_out_channels),
        layers_per_block=model.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=model.attention_head_dim,
        norm_num_groups=model.norm_num_groups,
        dropout=model.dropout,
        num_class_embeds=num_classes + 1 if model.class_conditional else None,
    )


def build_noise_scheduler(diffusion: DiffusionConfig) -> DDPMScheduler:
    """The training schedule. `clip_sample=False`: scaled latents are not bounded to [-1, 1], and diffusers'
    default clip would distort every x0 prediction while sampling."""
    return DDPMScheduler(
        num_train_timesteps=diffusion.num_train_timesteps,
        beta_schedule=diffusion.beta_schedule,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
        prediction_type=diffusion.prediction_type,
        clip_sample=False,
    )
