"""The Accelerator every job builds, and the signal handling that lets a run checkpoint before it stops."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

from ldm_vae.errors import ConfigError


def build_accelerator(
    run_dir: Path, mixed_precision: str, grad_accum_steps: int, use_compile: bool
) -> Accelerator:
    """`cpu=True` without CUDA, so torchrun on a CPU box really gives N gloo processes (accelerate#2741).

    Each job gets its own settings: accelerate keeps one process-wide AcceleratorState and, once it exists,
    silently keeps its torch.compile backend (a second job in the same process with `use_compile` would
    run eagerly) and refuses another precision; so that state is dropped first. The distributed setup
    (PartialState, the process group) is kept.
    """
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision='fp16': needs a CUDA GPU; use 'bf16' or 'no' on CPU")
    AcceleratorState._reset_state()
    GradientState._reset_state()
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


def memory_format(use_channels_last: bool) -> torch.memory_format:
    return torch.channels_last if use_channels_last else torch.contiguous_format
