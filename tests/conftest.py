"""Shared fixtures: the tiny preset made tinier, and a fresh accelerate state for every test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from ldm_vae.config import AutoencoderTrainConfig, load_config
from train.checkpoints import list_checkpoints

# kl-tiny at 16 px on 64 built-in images: a full train -> checkpoint -> export -> report in seconds.
TINY_OVERRIDES = [
    "data.resolution_px=16",
    "data.builtin_samples=64",
    "data.held_out_samples=8",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every_steps=1",
    "train.image_every_steps=3",
    "train.checkpoint_every_steps=3",
    "optim.warmup_steps=2",
    "loss.disc_start_steps=3",
    "loss.disc_warmup_steps=1",
    "export.scaling_samples=16",
    "export.report_samples=4",
]


def tiny_config(run_dir, *overrides: str) -> AutoencoderTrainConfig:
    return load_config(AutoencoderTrainConfig, "kl-tiny", [*TINY_OVERRIDES, f"run_dir={run_dir}", *overrides])


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps a process-wide singleton; each test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """Last-checkpoint weights equal up to float summation order.

    Biases right before a GroupNorm (and attention key biases) have an exactly-zero gradient, so Adam
    turns their rounding noise into lr-sized steps: only weights are compared. A real difference (other
    data, other noise, unsynchronised gradients) moves weights by ~1e-3 in these runs.
    """
    for name in ("ae", "discriminator"):
        a = load_file(list_checkpoints(run_a)[-1] / f"{name}.safetensors")
        b = load_file(list_checkpoints(run_b)[-1] / f"{name}.safetensors")
        for key in (k for k in a if k.endswith("weight")):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=5e-5, msg=f"{name}: {key}")
