"""The VQ job: the KL loop with a quantizer, exact resume, and a VQModel export that diffusers loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config
from diffusers import VQModel
from safetensors.torch import load_file, save_file

from ldm_vae.data import ShapesDataset
from ldm_vae.models import image_to_indices, indices_to_image
from ldm_vae.models.export import verify_export
from ldm_vae.train.autoencoder import build_models, train
from ldm_vae.training.autoencoder_report import export_ok
from ldm_vae.training.checkpoints import list_checkpoints


def held_out_batch(n: int = 4) -> torch.Tensor:
    dataset = ShapesDataset(n, 16, seed=1)
    return torch.stack([dataset[i][0] for i in range(n)])


@pytest.mark.slow
def test_vq_trains_and_exports_a_vqmodel_with_identical_codes(tmp_path):
    run_dir = train(tiny_config(tmp_path / "run", kind="vq"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check = metrics["export"]
    assert not check["loading_problems"] and check["indices_identical"] and check["max_abs_difference"] < 1e-4
    codebook = metrics["held_out"]["codebook"]
    assert 0 < codebook["usage"] <= 1 and codebook["perplexity"] >= 1

    vq, info = VQModel.from_pretrained(run_dir / "export", output_loading_info=True)
    assert not any(info.values()), info
    vq.eval()
    codes = vq.quantize.embedding.weight
    assert codes.shape == (32, 8) and vq.config.vq_embed_dim == 8  # projections folded: 16 -> 8 channels
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(32))  # unit norm: Euclidean lookup == cosine
    assert vq.config.scaling_factor == metrics["latent_statistics"]["scaling_factor"] != 0.18215

    images = held_out_batch()
    tokens = image_to_indices(vq, images)
    assert tokens.shape == (4, 4, 4) and tokens.dtype == torch.int64 and int(tokens.max()) < 32
    with torch.no_grad():
        torch.testing.assert_close(indices_to_image(vq, tokens), vq(images).sample)


def test_a_renamed_codebook_key_fails_the_export_check(tmp_path):
    """diffusers only warns about a missing key and keeps a random codebook: our check must catch it."""
    run_dir = train(tiny_config(tmp_path / "run", "train.max_steps=2", kind="vq"))
    export = run_dir / "export"
    weights = load_file(export / "diffusion_pytorch_model.safetensors")
    weights["quantize.codebook.weight"] = weights.pop("quantize.embedding.weight")
    save_file(weights, export / "diffusion_pytorch_model.safetensors")
    module, _ = build_models(tiny_config(tmp_path / "unused", kind="vq"))  # any model will do here
    check = verify_export(module.autoencoder, export, held_out_batch())
    assert "quantize.embedding.weight" in str(check["loading_problems"]) and not export_ok(check)


@pytest.mark.slow
def test_vq_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path):
    """The codebook's EMA statistics and dead-code counters are training state: they must resume too."""
    steps = ["train.max_steps=6", "train.checkpoint_every_steps=3", "train.checkpoint_total_limit=3"]
    whole = train(tiny_config(tmp_path / "whole", *steps, kind="vq"))
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    halfway = list_checkpoints(whole)[0]
    assert halfway.name == "step-0000003"
    shutil.copytree(halfway, resumed_dir / "checkpoints" / halfway.name)
    resumed = train(tiny_config(resumed_dir, *steps, "train.resume=latest", kind="vq"))
    for name in ("ae", "discriminator"):
        a = load_file(list_checkpoints(whole)[-1] / f"{name}.safetensors")
        b = load_file(list_checkpoints(resumed)[-1] / f"{name}.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a), name
