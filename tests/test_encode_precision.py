"""`ldm-vae encode --fp16`: a VAE whose activations overflow fp16 (as SDXL's does) still gives finite latents.

CPU autocast runs convolutions in fp16, so the overflow is real here: the first convolution's weights are
scaled up until its outputs pass fp16's 65504, which fp32 and bf16 hold easily.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vae
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from test_encode import encode_args

from ldm_vae.train.cli import main
from ldm_vae.train.encode import encode_finite


def overflowing(vae: AutoencoderKL) -> AutoencoderKL:
    """conv_in outputs around 1e6: inf in fp16, then NaN after the GroupNorm; finite in fp32."""
    with torch.no_grad():
        vae.encoder.conv_in.weight.mul_(1e6)
        vae.encoder.conv_in.bias.mul_(1e6)
    return vae


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_an_overflowing_batch_is_redone_in_fp32(images):
    vae = overflowing(tiny_vae("kl"))
    with torch.autocast("cpu", dtype=torch.float16), torch.no_grad():
        assert not vae.encode(images).latent_dist.mean.isfinite().all()  # the overflow is real
    with torch.no_grad():
        latents, upcast = encode_finite(vae, images, torch.float16)
        reference, _ = encode_finite(vae, images, None)
    assert upcast
    for key in reference:
        assert latents[key].isfinite().all() and torch.equal(latents[key], reference[key])


def test_a_batch_that_fits_fp16_stays_fp16(images):
    vae = tiny_vae("kl")
    with torch.no_grad():
        latents, upcast = encode_finite(vae, images, torch.float16)
        reference, _ = encode_finite(vae, images, None)
    assert not upcast and latents["mean"].dtype == torch.float16
    torch.testing.assert_close(latents["mean"].float(), reference["mean"], atol=2e-2, rtol=0)


def test_encode_fp16_of_an_overflowing_vae_writes_the_fp32_latents(kl_model, tmp_path, capsys):
    model = tmp_path / "overflowing"
    overflowing(AutoencoderKL.from_pretrained(kl_model)).save_pretrained(model)
    assert main(encode_args(model, tmp_path / "fp16", "--fp16", "--dtype", "fp32")) == 0
    assert "overflowed fp16, redone in fp32" in capsys.readouterr().out
    assert main(encode_args(model, tmp_path / "fp32", "--dtype", "fp32")) == 0
    for name in ("shard-00000.safetensors", "shard-00005.safetensors"):
        fp16, fp32 = load_file(tmp_path / "fp16" / name), load_file(tmp_path / "fp32" / name)
        assert fp16["mean"].isfinite().all() and torch.equal(fp16["mean"], fp32["mean"])


def test_bf16_and_fp16_together_are_refused_in_one_line(kl_model, tmp_path, capsys):
    assert main(encode_args(kl_model, tmp_path / "out", "--bf16", "--fp16")) == 2
    error = capsys.readouterr().err.strip()
    assert "--bf16 and --fp16" in error and len(error.splitlines()) == 1
