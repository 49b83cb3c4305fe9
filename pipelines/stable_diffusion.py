"""Text-to-image export: the trained parts as a stock `diffusers.StableDiffusionPipeline`.

The folder it writes is what every diffusers user already runs; it loads with diffusers, transformers and
torch alone (no ldm-vae), and samples with prompts, negative prompts and classifier-free guidance:

    >>> from diffusers import StableDiffusionPipeline
    >>> pipe = StableDiffusionPipeline.from_pretrained("runs/ldm-text/pipeline")
    >>> image = pipe("a red circle on a dark background", guidance_scale=3.0).images[0]

StableDiffusionPipeline decodes `latents / vae.config.scaling_factor` and nothing else, and its denoising
loop needs a DDPM-path scheduler, so only a KL autoencoder with a plain scale and an eps or v model fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, SchedulerMixin, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from ldm_vae.errors import ConfigError
from ldm_vae.metrics.classifier import FactorClassifier, factor_hits
from ldm_vae.models.text import write_bpe_files


def check_stable_diffusion_parts(vae: object, scheduler: SchedulerMixin) -> None:
    """Refuse what StableDiffusionPipeline would get wrong: a VQ first stage, a shifted or per-channel latent
    normalization (it silently ignores both), a flow-matching schedule (its loop needs scale_model_input)."""
    if not isinstance(vae, AutoencoderKL):
        raise ConfigError(
            f"text-to-image needs an AutoencoderKL store, not {type(vae).__name__}: StableDiffusionPipeline "
            "decodes with a KL autoencoder"
        )
    config = vae.config
    if config.get("shift_factor") or config.get("latents_mean") is not None:
        raise ConfigError(
            "data.normalization must be 'scale' for text-to-image: StableDiffusionPipeline decodes "
            "latents / scaling_factor and ignores shift_factor and latents_mean/latents_std"
        )
    if not hasattr(scheduler, "scale_model_input") or not hasattr(scheduler, "init_noise_sigma"):
        raise ConfigError(
            f"{type(scheduler).__name__}: StableDiffusionPipeline needs a DDPM-path scheduler; use "
            "diffusion.prediction_type epsilon or v_prediction for text-to-image"
        )


def stable_diffusion_pipeline(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
) -> StableDiffusionPipeline:
    """The parts as a StableDiffusionPipeline, without a safety checker (nothing here to check).

    The scheduler gets `steps_offset=1`, as SD's have: the pipeline would rewrite any other value with a
    deprecation warning.
    """
    check_stable_diffusion_parts(vae, scheduler)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=type(scheduler).from_config(scheduler.config, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_stable_diffusion(pipe: StableDiffusionPipeline, folder: str | Path) -> Path:
    """`save_pretrained`, plus the tokenizer's vocab.json and merges.txt for transformers 4.x readers."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    write_bpe_files(pipe.tokenizer, folder / "tokenizer")
    return folder


@torch.no_grad()
def sample_by_prompt(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    per_prompt: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """(len(prompts), per_prompt, 3, H, W) in [0, 1]: a row per prompt. Batch i draws from its own generator
    seeded `seed + first index`, so a grid is reproducible (as `sample_by_class` does for classes)."""
    repeated = [prompt for prompt in prompts for _ in range(per_prompt)]
    images = []
    for start in range(0, len(repeated), batch_size):
        generator = torch.Generator(pipe.device).manual_seed(seed + start)
        output = pipe(
            repeated[start : start + batch_size],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        )
        images.append(output.images.cpu())
    return torch.cat(images).unflatten(0, (len(prompts), per_prompt))


@torch.no_grad()
def judge_prompts(
    pipe: StableDiffusionPipeline,
    classifier: FactorClassifier,
    prompts: list[str],
    factors: torch.Tensor,
    per_prompt: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_by_prompt`'s samples (p, per_prompt, 3, H, W) in [0, 1], and whether the factor judge finds
    in each the factors (p, k) its prompt asks for: hits (p, per_prompt, k) bool."""
    grid = sample_by_prompt(pipe, prompts, per_prompt, num_inference_steps, guidance_scale, seed)
    wanted = factors.repeat_interleave(per_prompt, dim=0)  # (p * per_prompt, k)
    hits = factor_hits(classifier, grid.flatten(0, 1) * 2 - 1, wanted)
    return grid, hits.unflatten(0, (len(prompts), per_prompt))
