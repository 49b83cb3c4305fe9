"""train-ae with every quantizer kind: FSQ and LFQ runs export plain VQModels that pick the same codes; a VQ
run with the rotation trick and LeCAM resumes exactly; the config refuses what cannot train or export."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_config
from diffusers import VQModel
from safetensors.torch import load_file

from ldm_vae.data import ShapesDataset
from ldm_vae.errors import ConfigError
from ldm_vae.models import image_to_indices, indices_to_image
from ldm_vae.train.autoencoder import train
from ldm_vae.training.checkpoints import list_checkpoints
from ldm_vae.training.tracking import read_stats


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, num_codes, code_dim, health_keys",
    [
        (["model.quantizer.kind=fsq", "model.quantizer.levels=[4,3,3]"], 36, 3, {"dead_codes"}),
        (
            ["model.quantizer.kind=lfq", "model.quantizer.lfq_bits=5"],
            32,
            5,
            {"dead_codes", "sample_entropy", "codebook_entropy"},
        ),
    ],
    ids=["fsq", "lfq"],
)
def test_fsq_and_lfq_train_and_export_plain_vqmodels_with_the_same_codes(
    tmp_path, overrides, num_codes, code_dim, health_keys
):
    run_dir = train(tiny_config(tmp_path / "run", *overrides, kind="vq"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    check = metrics["export"]
    assert not check["loading_problems"] and check["indices_identical"] and check["max_abs_difference"] < 1e-4
    codebook = metrics["held_out"]["codebook"]
    assert 1 / num_codes < codebook["usage"] <= 1 and codebook["perplexity"] > 1
    logged = {key.removeprefix("codebook/") for row in read_stats(run_dir) for key in row}
    assert health_keys | {"batch_usage", "perplexity"} <= logged

    vq, info = VQModel.from_pretrained(run_dir / "export", output_loading_info=True)
    assert not any(info.values()), info
    vq.eval()
    assert vq.quantize.embedding.weight.shape == (num_codes, code_dim)
    dataset = ShapesDataset(4, 16, seed=1)
    images = torch.stack([dataset[i][0] for i in range(4)])
    tokens = image_to_indices(vq, images)
    assert tokens.shape == (4, 4, 4) and int(tokens.max()) < num_codes
    with torch.no_grad():
        torch.testing.assert_close(indices_to_image(vq, tokens), vq(images).sample)


@pytest.mark.slow
def test_rotation_trick_and_lecam_resume_exactly(tmp_path):
    """LeCAM's logit averages live in the discriminator's checkpoint, so the resumed run ends identical."""
    settings = [
        "train.max_steps=6",
        "train.checkpoint_every_steps=3",
        "train.checkpoint_total_limit=3",
        "model.quantizer.gradient=rotation",
        "loss.lecam_weight=0.01",
        "loss.lecam_decay=0.5",
    ]
    whole = train(tiny_config(tmp_path / "whole", *settings, kind="vq"))
    assert any("train/lecam_loss" in row for row in read_stats(whole))
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    halfway = list_checkpoints(whole)[0]
    shutil.copytree(halfway, resumed_dir / "checkpoints" / halfway.name)
    resumed = train(tiny_config(resumed_dir, *settings, "train.resume=latest", kind="vq"))
    halfway_disc = load_file(halfway / "discriminator.safetensors")
    for name in ("ae", "discriminator"):
        a = load_file(list_checkpoints(whole)[-1] / f"{name}.safetensors")
        b = load_file(list_checkpoints(resumed)[-1] / f"{name}.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a), name
    final_disc = load_file(list_checkpoints(whole)[-1] / "discriminator.safetensors")
    assert not torch.equal(final_disc["lecam.ema_real"], halfway_disc["lecam.ema_real"]), "averages moved"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.quantizer.kind=fsq", "model.quantizer.levels=[8,8,8,8,8,8,8]"], "model.quantizer.levels="),
        (["model.quantizer.kind=lfq", "model.quantizer.lfq_bits=20"], "model.quantizer.lfq_bits=20"),
        (["model.quantizer.kind=fsq", "model.quantizer.levels=[4,1]"], r"model.quantizer.levels\[1\]=1"),
        (["model.quantizer.kind=fsq", "model.quantizer.gradient=rotation"], "model.quantizer.gradient"),
        (["loss.disc_weight=0", "loss.lecam_weight=0.001"], "loss.lecam_weight"),
        (["loss.lecam_decay=1.0"], "loss.lecam_decay"),
    ],
)
def test_config_refuses_what_cannot_train_or_export(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        tiny_config(tmp_path, *overrides, kind="vq")
    assert "\n" not in str(error.value)
