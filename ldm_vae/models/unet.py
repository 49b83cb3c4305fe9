"""The latent diffusion model: a diffusers UNet2DModel sized from a config and the latent store's shape."""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    SchedulerMixin,
    UNet2DModel,
)

from ldm_vae.config import DiffusionConfig, UNetConfig

# What `sample.scheduler` names: DDPM ancestral, DDIM (eta 0), DPM-Solver++ (2nd order multistep)
SAMPLERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


def unet_layout(model: UNetConfig, latent_shape: tuple[int, int, int], attention: str) -> dict[str, Any]:
    """The arguments UNet2DModel and UNet2DConditionModel share, for latents (c, h, w): the levels of the
    config, with `attention` ("Attn" or "CrossAttn") blocks at its `attention_levels`."""
    channels, height, width = latent_shape
    levels = model.attention_levels
    return {
        "sample_size": height if height == width else (height, width),
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": tuple(model.block_out_channels),
        "layers_per_block": model.layers_per_block,
        "down_block_types": tuple(f"{attention}DownBlock2D" if a else "DownBlock2D" for a in levels),
        "up_block_types": tuple(f"{attention}UpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
        "norm_num_groups": model.norm_num_groups,
        "dropout": model.dropout,
    }


def build_unet(model: UNetConfig, latent_shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    """UNet2DModel for latents (c, h, w). Class-conditional: `num_classes + 1` embeddings, the last one the
    null class of classifier-free guidance (diffusers' UNet2DModel reserves none; DiT hard-codes 1000)."""
    return UNet2DModel(
        **unet_layout(model, latent_shape, "Attn"),
        attention_head_dim=model.attention_head_dim,
        num_class_embeds=num_classes + 1 if model.conditioning == "class" else None,
    )


def build_noise_scheduler(diffusion: DiffusionConfig) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The training schedule: `FlowMatchEulerDiscreteScheduler` for `prediction_type: flow` (the straight
    path, s = t / T), otherwise a `DDPMScheduler` with `clip_sample=False` (scaled latents are not bounded to
    [-1, 1], and diffusers' default clip would distort every x0 prediction while sampling).

    Zero terminal SNR (Lin et al. 2024) rescales the betas so the last timestep is pure noise, and makes
    samplers start there ("trailing" spacing; "leading" would never visit t = T-1).
    """
    if diffusion.prediction_type == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=diffusion.num_train_timesteps)
    return DDPMScheduler(
        num_train_timesteps=diffusion.num_train_timesteps,
        beta_schedule=diffusion.beta_schedule,
        beta_start=diffusion.beta_start,
        beta_end=diffusion.beta_end,
        prediction_type=diffusion.prediction_type,
        clip_sample=False,
        rescale_betas_zero_snr=diffusion.zero_terminal_snr,
        timestep_spacing="trailing" if diffusion.zero_terminal_snr else "leading",
    )


def is_flow_schedule(scheduler: SchedulerMixin) -> bool:
    """Whether `scheduler` runs the straight flow path: the training one or a flow sampler made from it."""
    return (
        isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
        or scheduler.config.get("prediction_type") == "flow_prediction"
    )


def sampling_scheduler(current: SchedulerMixin, name: str) -> SchedulerMixin:
    """Sampler `name` (ddpm, ddim or dpm) for a UNet trained under the schedule of `current` (the training
    scheduler or any sampler made from it).

    On the DDPM path each keeps the training betas and prediction type. On the flow path DDIM is the Euler
    step x_{s'} = x_s + (s' - s) v (DDIM's update on a straight path), DDPM its stochastic variant
    (re-noise the x0 estimate), and DPM-Solver++ runs on flow sigmas with a flow prediction.
    """
    if not is_flow_schedule(current):
        return SAMPLERS[name].from_config(current.config)
    steps = current.config.num_train_timesteps
    if name == "dpm":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=steps, use_flow_sigmas=True, prediction_type="flow_prediction"
        )
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=steps, stochastic_sampling=name == "ddpm")
