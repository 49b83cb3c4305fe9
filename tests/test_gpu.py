"""On a CUDA device: both jobs train in bf16, torch.compile and channels_last train like eager, a resumed run
lands close to an uninterrupted one, and fp16 encoding of a VAE that overflows fp16 stays finite.

Marked `gpu` and skipped without CUDA; `make test-gpu` runs them. Tiny models, seconds each (the compiled
run pays for its compilation). The equality tests run in plain fp32 (TF32 off: cuDNN's default rounds
convolution inputs to 10 bits), with AdamW steps proportional to gradients (conftest's PLAIN_STEPS), and
use conftest's tolerance: every weight tensor's difference between the two runs within ALIKE_RTOL (1e-3)
of how far it moved from its initial value. What legitimately differs on a GPU (another kernel for another
memory format, fused kernels under compile, non-deterministic atomics in backward kernels) changes the
float summation order only, orders of magnitude below that; a real bug (other data, a missed gradient, a
wrong restore) moves weights by O(1) of their movement.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import PLAIN_STEPS, assert_same_training, assert_trained_alike, tiny_config, tiny_vae
from safetensors.torch import load_file
from test_encode import encode_args
from test_encode_precision import overflowing
from test_train_ldm import ldm_config

from ldm_vae.latents import LatentDataset
from ldm_vae.models import build_unet
from ldm_vae.train.autoencoder import train as train_ae
from ldm_vae.train.cli import main
from ldm_vae.train.encode import encode_finite
from ldm_vae.train.ldm import train as train_ldm
from ldm_vae.training.checkpoints import list_checkpoints
from ldm_vae.training.tracking import read_stats

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device: `make test-gpu` on a machine with one"
    ),
]

GAN_FROM_START = ["loss.disc_start_steps=0", "loss.disc_warmup_steps=0"]  # the whole step from step 0
# A smaller kl-tiny (fewer ops for torch.compile to compile), the GAN on from step 0.
SMALL_AE = [
    "model.block_out_channels=[16,32]",
    "model.norm_num_groups=8",
    "model.mid_block_attention=false",
    "loss.disc_layers=1",
    "loss.disc_channels=16",
    *GAN_FROM_START,
]
# 8 held-out images and one training batch of 4, repeated every step: the loss must fall.
ONE_BATCH = ["data.builtin_samples=12", "data.random_flip=false", "optim.warmup_steps=0"]
STEPS = 30


@pytest.fixture()
def exact_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32, so two runs differ only in summation order."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def store(kl_model, tmp_path_factory) -> Path:
    """16 latents of the random kl-tiny, encoded on the GPU."""
    out = tmp_path_factory.mktemp("store") / "latents"
    assert main(encode_args(kl_model, out, "--dtype", "fp32", "--builtin-samples", "16")) == 0
    return out


def assert_finite_and_falling(rows: list[dict], key: str) -> None:
    """Every logged value finite, no step skipped, the mean of the last 10 logs under 80 % of the first 10."""
    assert len(rows) == STEPS
    assert all(math.isfinite(value) for row in rows for value in row.values())
    assert rows[-1]["train/nonfinite_steps"] == 0
    first, last = (sum(row[key] for row in part) / len(part) for part in (rows[:10], rows[-10:]))
    assert last < 0.8 * first, f"{key} did not fall: {first:.4g} -> {last:.4g}"
    assert all(0 < row["train/mfu"] < 1 for row in rows)  # against the bf16 peak measured at start


def test_train_ae_bf16_steps_are_finite_and_the_loss_falls(tmp_path):
    """kl-tiny in bf16 with LPIPS off (no weights here), the PatchGAN and its adaptive weight from step 0."""
    steps = [f"train.max_steps={STEPS}", "train.checkpoint_every_steps=1000", "train.image_every_steps=10"]
    cfg = tiny_config(tmp_path, "train.mixed_precision=bf16", *ONE_BATCH, *GAN_FROM_START, *steps)
    run_dir = train_ae(cfg)
    assert_finite_and_falling(read_stats(run_dir), "train/rec_loss")
    assert json.loads((run_dir / "metrics.json").read_text())["nonfinite_steps"] == 0


def test_train_ldm_bf16_steps_are_finite_and_the_loss_falls(store, tmp_path):
    steps = [f"train.max_steps={STEPS}", "train.checkpoint_every_steps=1000", "train.image_every_steps=10"]
    run_dir = train_ldm(
        ldm_config(
            store, tmp_path, "train.mixed_precision=bf16", "train.batch_size=16", "optim.lr=1e-3", *steps
        )
    )
    assert_finite_and_falling(read_stats(run_dir), "train/loss")


def test_compiled_train_ae_trains_like_eager(tmp_path, exact_fp32):
    """torch.compile (inductor, through accelerate) on the whole step: autoencoder, discriminator with its
    requires_grad toggling, the adaptive weight's autograd.grad. Step 0 counts FLOPs eagerly; 1-3 compiled."""
    common = [*PLAIN_STEPS, *SMALL_AE, "train.max_steps=4", "train.checkpoint_every_steps=4"]
    cfg = tiny_config(tmp_path / "eager", *common)
    train_ae(cfg)
    train_ae(tiny_config(tmp_path / "compiled", *common, "train.use_compile=true"))
    assert_same_training(tmp_path / "eager", tmp_path / "compiled", cfg)


def test_channels_last_train_ae_trains_like_contiguous(tmp_path, exact_fp32):
    common = [*PLAIN_STEPS, *SMALL_AE, "train.max_steps=4", "train.checkpoint_every_steps=4"]
    cfg = tiny_config(tmp_path / "contiguous", *common)
    train_ae(cfg)
    train_ae(tiny_config(tmp_path / "channels_last", *common, "train.use_channels_last=true"))
    assert_same_training(tmp_path / "contiguous", tmp_path / "channels_last", cfg)


def test_channels_last_train_ldm_trains_like_contiguous(store, tmp_path, exact_fp32):
    common = [*PLAIN_STEPS, "train.max_steps=4", "train.checkpoint_every_steps=4"]
    runs = {layout: tmp_path / layout for layout in ("contiguous", "channels_last")}
    train_ldm(ldm_config(store, runs["contiguous"], *common))
    train_ldm(ldm_config(store, runs["channels_last"], *common, "train.use_channels_last=true"))
    cfg = ldm_config(store, runs["contiguous"])
    torch.manual_seed(cfg.seed)
    data = LatentDataset(store)
    initial = build_unet(cfg.model, data.latent_shape, data.num_classes).state_dict()
    a, b = (load_file(list_checkpoints(run)[-1] / "unet.safetensors") for run in runs.values())
    assert_trained_alike(a, b, initial, "unet")


def test_train_ae_resumed_on_gpu_lands_close_to_an_uninterrupted_run(tmp_path, exact_fp32):
    """Exact on CPU (test_train_autoencoder); here backward kernels may add in another order, so close."""
    common = [*PLAIN_STEPS, *SMALL_AE, "train.max_steps=6", "train.checkpoint_every_steps=3"]
    cfg = tiny_config(tmp_path / "a", *common)
    train_ae(cfg)
    midway = list_checkpoints(tmp_path / "a")[0]
    assert midway.name == "step-0000003"
    shutil.copytree(midway, tmp_path / "b" / "checkpoints" / midway.name)
    train_ae(tiny_config(tmp_path / "b", *common, "train.resume=latest"))
    assert_same_training(tmp_path / "a", tmp_path / "b", cfg)


def test_fp16_encode_of_a_vae_that_overflows_fp16_is_finite_on_gpu():
    """As SDXL's VAE: fp16 activations overflow, the batch is redone in fp32 (train/encode.py)."""
    vae = overflowing(tiny_vae("kl")).cuda()
    generator = torch.Generator("cuda").manual_seed(0)
    images = torch.rand(4, 3, 16, 16, device="cuda", generator=generator) * 2 - 1
    with torch.autocast("cuda", dtype=torch.float16), torch.no_grad():
        assert not vae.encode(images).latent_dist.mean.isfinite().all()  # the overflow is real here
    with torch.no_grad():
        latents, upcast = encode_finite(vae, images, torch.float16)
        reference, _ = encode_finite(vae, images, None)
    assert upcast
    for key, value in reference.items():  # the fp32 redo is the reference's computation
        assert latents[key].isfinite().all()
        torch.testing.assert_close(latents[key], value, rtol=1e-5, atol=1e-5)


def test_encode_fp16_cli_of_an_overflowing_vae_writes_finite_latents_on_gpu(tmp_path, capsys):
    model = tmp_path / "overflowing"
    overflowing(tiny_vae("kl")).save_pretrained(model)
    assert main(encode_args(model, tmp_path / "fp16", "--fp16", "--dtype", "fp32")) == 0
    assert "overflowed fp16, redone in fp32" in capsys.readouterr().out
    for shard in sorted((tmp_path / "fp16").glob("shard-*.safetensors")):
        tensors = load_file(shard).values()
        assert all(tensor.isfinite().all() for tensor in tensors if tensor.is_floating_point())
