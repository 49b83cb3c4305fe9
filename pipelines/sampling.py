"""Sampling helpers every job and tool shares: scheduler swap, a labelled grid's images, loading.

They take a `LatentDiffusionPipeline` and use only its public call, so the training job, `ldm-vae sample`,
the demo and the benchmarks all sample the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import DiffusionPipeline
from torch import Tensor

from ldm_vae.config import SampleConfig
from ldm_vae.errors import ConfigError
from ldm_vae.metrics.classifier import SampleClassifier, judge
from ldm_vae.models.unet import sampling_scheduler
from ldm_vae.pipelines.latent_diffusion import LatentDiffusionPipeline

UNCONDITIONAL_ROWS = 8
P = TypeVar("P", bound=DiffusionPipeline)


def with_scheduler(pipe: LatentDiffusionPipeline, name: str) -> LatentDiffusionPipeline:
    """`pipe` with its scheduler replaced by `name`, keeping the training schedule (betas, prediction, or
    the flow path)."""
    pipe.scheduler = sampling_scheduler(pipe.scheduler, name)
    return pipe


def sample_by_class(
    pipe: LatentDiffusionPipeline,
    per_class: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    class_ids: list[int] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """(rows, per_class, 3, H, W) in [0, 1]: a row per class in `class_ids` (default: every class), or
    8 rows for an unconditional model.

    Batch i draws from its own generator seeded `seed + first index`, so a grid is reproducible.
    """
    conditional = pipe.unet.config.num_class_embeds is not None
    if conditional:
        rows = class_ids if class_ids is not None else list(range(pipe.unet.config.num_class_embeds - 1))
    else:
        rows = list(range(UNCONDITIONAL_ROWS))
    labels = [row for row in rows for _ in range(per_class)]
    images = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start : start + batch_size]
        generator = torch.Generator(pipe.device).manual_seed(seed + start)
        images.append(
            pipe(
                batch_size=len(chunk),
                class_labels=chunk if conditional else None,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type="pt",
            ).images.cpu()
        )
    return torch.cat(images).unflatten(0, (len(rows), per_class))


def load_pipeline(
    folder: str, key: str = "--pipeline", pipeline_class: type[P] = LatentDiffusionPipeline
) -> P:
    """A saved pipeline of `pipeline_class` (a text run saves a StableDiffusionPipeline), on the GPU if
    there is one, its progress bar off."""
    if not (Path(folder) / "model_index.json").is_file():
        raise ConfigError(
            f"{key}={folder!r}: not a saved pipeline (no model_index.json); see train-ldm's run_dir"
        )
    pipe = pipeline_class.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def class_samples(
    pipe: LatentDiffusionPipeline,
    sample: SampleConfig,
    per_class: int,
    seed: int,
    guidance_scales: Sequence[float] = (),
) -> dict[str, tuple[Tensor, Tensor]]:
    """`per_class` samples of every class (b, 3, R, R) in [-1, 1] and the classes asked for (b,), at
    guidance 1 (none), at the configured guidance scale and at each of `guidance_scales`; keyed
    `guidance_{g}`. The same seed gives the same samples, so several judges can score one set."""
    drawn = {}
    for guidance in sorted({1.0, sample.guidance_scale, *guidance_scales}):
        grid = sample_by_class(
            pipe, per_class, sample.num_inference_steps, guidance, seed=seed
        )  # (classes, per_class, 3, R, R) in [0, 1]
        labels = torch.arange(len(grid)).repeat_interleave(per_class)
        drawn[f"guidance_{guidance:g}"] = (grid.flatten(0, 1) * 2 - 1, labels)
    return drawn


def score_pipeline(
    pipe: LatentDiffusionPipeline,
    classifier: SampleClassifier,
    real_features: Tensor,
    sample: SampleConfig,
    per_class: int,
    seed: int,
    guidance_scales: Sequence[float] = (),
) -> dict[str, dict[str, float]]:
    """Class accuracy and feature Fréchet distance to the real images of `class_samples`' sets."""
    drawn = class_samples(pipe, sample, per_class, seed, guidance_scales)
    return {name: judge(classifier, *images_labels, real_features) for name, images_labels in drawn.items()}
