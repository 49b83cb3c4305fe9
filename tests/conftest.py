"""Shared fixtures: the tiny preset made tinier, and a fresh accelerate state for every test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers import AutoencoderKL, UNet2DModel, VQModel
from safetensors.torch import load_file
from torch import nn

from ldm_vae.config import AutoencoderTrainConfig, load_config
from ldm_vae.models import build_autoencoder_kl
from ldm_vae.train.autoencoder import build_models
from ldm_vae.training.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parent.parent

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


# vq-tiny likewise, with a codebook the few tokens of a tiny run can fill.
TINY_VQ_OVERRIDES = [
    *TINY_OVERRIDES,
    "model.quantizer.num_codes=32",
    "model.quantizer.dead_code_window_steps=2",
]


def tiny_config(run_dir, *overrides: str, kind: str = "kl") -> AutoencoderTrainConfig:
    preset, tiny = ("vq-tiny", TINY_VQ_OVERRIDES) if kind == "vq" else ("kl-tiny", TINY_OVERRIDES)
    return load_config(AutoencoderTrainConfig, preset, [*tiny, f"run_dir={run_dir}", *overrides])


def tiny_vae(kind: str) -> AutoencoderKL | VQModel:
    """A seeded random 2-level (f2) AutoencoderKL (4 channels) or VQModel (3 channels, 16 codes), 16 px."""
    common = dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=16,
    )
    torch.manual_seed(0)
    if kind == "kl":
        return AutoencoderKL(latent_channels=4, **common).eval()
    return VQModel(latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, **common).eval()


def tiny_unet(channels: int, num_class_embeds: int | None = 4) -> UNet2DModel:
    return UNet2DModel(
        sample_size=8,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=num_class_embeds,
    ).eval()


class RandomFeatures(nn.Module):
    """A randomly initialised stand-in for Inception: uint8 (b, 3, H, W) -> (b, 8)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, self.num_features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.float() / 127.5 - 1.0))  # (b, 8, H, W)
        return h.mean(dim=(2, 3))


@pytest.fixture(scope="session")
def kl_model(tmp_path_factory) -> Path:
    """A random kl-tiny (f4) AutoencoderKL folder at 16 px: latent stores do not need trained weights."""
    cfg = load_config(AutoencoderTrainConfig, "kl-tiny", ["data.resolution_px=16"])
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("kl") / "model"
    build_autoencoder_kl(cfg.model, 16).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def private_index_cache(tmp_path_factory, monkeypatch):
    """Folder and shard indexes go to a temporary cache (children inherit it), never ~/.cache/ldm-vae."""
    monkeypatch.setenv("LDM_VAE_CACHE", str(tmp_path_factory.getbasetemp() / "ldm-vae-cache"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps a process-wide singleton; each test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# Multi-process equivalence runs compare two torchrun launches with the same thread count, and with
# AdamW's epsilon raised so that steps are proportional to gradients: with the default epsilon Adam turns
# float-summation noise in near-zero gradients (which differs between 1 and 2 processes) into steps of
# about the learning rate, and no tolerance could tell that from a real bug. With steps proportional to
# gradients, summation noise stays at float rounding, and a real difference (other data, other noise,
# unsynchronised gradients) is O(1) of the movement.
PLAIN_STEPS = ["optim.adam_eps=1.0"]
ALIKE_RTOL, ALIKE_ATOL = 1e-3, 1e-7


def torchrun(module: str, processes: int, *arguments: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run -m MODULE ARGS` on CPU (gloo), one torch thread per process."""
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)),
        *("-m", module, *arguments),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def assert_trained_alike(a: dict, b: dict, initial: dict, name: str) -> None:
    """Two state dicts moved every weight tensor from `initial` to the same place, up to float summation
    order: |a - b| <= ALIKE_RTOL * |a - initial| + ALIKE_ATOL per tensor (norms). See PLAIN_STEPS."""
    for key in (k for k in a if k.endswith("weight")):
        moved = (a[key] - initial[key]).norm()
        assert moved > 0, f"{name}: {key} did not train"
        difference = (a[key] - b[key]).norm()
        bound = ALIKE_RTOL * moved + ALIKE_ATOL
        assert difference <= bound, f"{name}: {key} differs between the runs ({difference:.3g} > {bound:.3g})"


def assert_same_training(run_a: Path, run_b: Path, cfg: AutoencoderTrainConfig) -> None:
    """The autoencoder runs `run_a` and `run_b` trained alike (see `assert_trained_alike`)."""
    torch.manual_seed(cfg.seed)
    module, disc = build_models(cfg)
    initial = {"ae": module.state_dict()} | ({"discriminator": disc.state_dict()} if disc else {})
    for name, init in initial.items():
        a = load_file(list_checkpoints(run_a)[-1] / f"{name}.safetensors")
        b = load_file(list_checkpoints(run_b)[-1] / f"{name}.safetensors")
        assert_trained_alike(a, b, init, name)
