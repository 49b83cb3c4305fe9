"""Pieces every training job shares: the Accelerator, the LR schedule and per-position randomness."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from ldm_vae.config import OptimConfig
from ldm_vae.data.sampler import position_generator
from ldm_vae.errors import ConfigError


def build_accelerator(
    run_dir: Path, mixed_precision: str, grad_accum_steps: int, use_compile: bool
) -> Accelerator:
    """`cpu=True` without CUDA, so torchrun on a CPU box really gives N gloo processes (accelerate#2741)."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision='fp16': needs a CUDA GPU; use 'bf16' or 'no' on CPU")
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")
        ),
        # No buffers to broadcast in our models (GroupNorm); with BatchNorm, broadcasting running stats
        # before every forward breaks the real/fake discriminator pattern (pytorch#65907).
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        dynamo_backend="inductor" if use_compile else "no",
    )


def lr_at(step: int, base_lr: float, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up, then constant or cosine down to min_lr_ratio * lr. A pure function of the step."""
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


def position_noise(positions: range, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, I) noise of `shape` for each stream position, stacked: (len(positions), *shape).

    Drawing per position (not per batch) makes N processes, gradient accumulation and a bigger batch
    all see the same noise for the same sample, and a resumed run draw what the uninterrupted one did.
    """
    return torch.stack([torch.randn(shape, generator=position_generator(seed, p)) for p in positions])


def agree_on_step(
    accelerator: Accelerator, nonfinite: torch.Tensor, stop_requested: bool
) -> tuple[bool, bool]:
    """(skip this step, stop now), decided by one collective for every process: any process with a
    non-finite loss makes all skip, any process with a stop signal makes all stop."""
    flags = torch.stack([nonfinite.float(), torch.tensor(float(stop_requested), device=nonfinite.device)])
    skip, stop = (accelerator.reduce(flags, "sum") > 0).tolist()
    return skip, stop


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads at step boundaries, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader workers would die on the terminal's Ctrl-C before the loop can checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
