"""The denoising loss of a diffusion model, for three objectives on two paths:

- `epsilon` (Ho et al. 2020, eq. 14) and `v_prediction` (Salimans & Ho 2022) on the DDPM path
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, integer t in [0, T);
- `flow` (rectified flow / flow matching, Liu et al. 2023, Lipman et al. 2023; SD3, Esser et al. 2024) on
  the straight path x_t = (1 - s) x0 + s eps with s in [0, 1], predicting the velocity v = eps - x0. The
  UNet sees s * T, as diffusers' `FlowMatchEulerDiscreteScheduler` passes it while sampling.

Optional Min-SNR-gamma weighting (Hang et al. 2023) for all three, and timesteps drawn uniformly or from
SD3's logit-normal density, which puts more training on the middle of the path.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_snr

from ldm_vae.config import DiffusionConfig

NoiseScheduler = DDPMScheduler | FlowMatchEulerDiscreteScheduler


def objective_of(scheduler: NoiseScheduler) -> str:
    """`epsilon`, `v_prediction` or `flow`: what the UNet trained under this schedule predicts."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return "flow"
    return scheduler.config.prediction_type


def draw_timesteps(diffusion: DiffusionConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` training timesteps, as the UNet sees them: integers in [0, T) for the DDPM path, floats
    s * T with s in [0, 1) for flow. Uniform, or u = sigmoid(N(logit_mean, logit_std)) (SD3's logit-normal)
    mapped to the same range."""
    u = compute_density_for_timestep_sampling(  # (count,) in [0, 1)
        diffusion.timestep_sampling,
        count,
        logit_mean=diffusion.logit_mean,
        logit_std=diffusion.logit_std,
        generator=generator,
    )
    scaled = u * diffusion.num_train_timesteps
    if diffusion.prediction_type == "flow":
        return scaled
    return scaled.long().clamp(max=diffusion.num_train_timesteps - 1)


def flow_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """The path position s = t / T in [0, 1] of flow timesteps (b,)."""
    return timesteps.float() / scheduler.config.num_train_timesteps


def signal_to_noise(scheduler: NoiseScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR (b,) of x_t: abar / (1 - abar) on the DDPM path, ((1 - s) / s)^2 on the flow path."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        s = flow_sigmas(scheduler, timesteps)
        return ((1 - s) / s).square()  # inf at s = 0 (clean), handled by min_snr_weight
    return compute_snr(scheduler, timesteps)


def min_snr_weight(snr: torch.Tensor, gamma: float, objective: str) -> torch.Tensor:
    """Per-sample weight (b,) that turns the plain eps, v or flow MSE into the Min-SNR-gamma loss.

    Min-SNR weighs the x0-error by min(SNR, gamma). Each MSE already carries an implicit factor that is
    divided out (Hang et al. 2023, Sec. 3.4): SNR for eps, SNR + 1 for v, and 1 / s^2 = (sqrt(SNR) + 1)^2
    for flow, since x0 = x_t - s v there.
    """
    clipped = snr.clamp(max=gamma)
    if objective == "epsilon":
        return clipped / snr
    if objective == "v_prediction":
        return clipped / (snr + 1)
    return clipped / (snr.sqrt() + 1).square()  # = min(SNR, gamma) s^2; 0 at s = 0 where SNR = inf


def noisy_and_target(
    scheduler: NoiseScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, what the UNet should predict), both (b, c, h, w), for clean x0, its noise and timesteps (b,)."""
    objective = objective_of(scheduler)
    if objective == "flow":
        s = flow_sigmas(scheduler, timesteps).view(-1, 1, 1, 1).to(x0.dtype)
        return (1 - s) * x0 + s * noise, noise - x0
    x_t = scheduler.add_noise(x0, noise, timesteps)  # sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    target = noise if objective == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
    return x_t, target


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: NoiseScheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    min_snr_gamma: float = 0.0,
    **conditioning: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, per-sample loss (b,)) for clean x0 (b, c, h, w), its noise and timesteps (b,).

    The objective follows the scheduler (see `objective_of`); the MSE is taken in fp32. `conditioning` goes
    to the model as keywords (e.g. the token `input_ids` of a `TextConditionedUNet`).
    """
    x_t, target = noisy_and_target(scheduler, x0, noise, timesteps)
    prediction = unet(x_t, timesteps, class_labels=class_labels, **conditioning).sample
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (b,)
    if min_snr_gamma > 0:
        snr = signal_to_noise(scheduler, timesteps)
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, objective_of(scheduler))
    return per_sample.mean(), per_sample.detach()
