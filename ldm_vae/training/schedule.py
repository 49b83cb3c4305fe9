"""The learning rate as a pure function of the step, so a resumed run needs no scheduler state."""

from __future__ import annotations

import math

import torch

from ldm_vae.config import OptimConfig


def lr_at(step: int, base_lr: float, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up, then constant or cosine down to min_lr_ratio * lr."""
    if step < optim.warmup_steps:
        return base_lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return base_lr
    progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return base_lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
