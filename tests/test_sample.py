"""`ldm-vae sample`: a labelled grid from a saved pipeline, scheduler swaps, classes by name, sample FID."""

from __future__ import annotations

import json

import pytest
from conftest import RandomFeatures, tiny_unet, tiny_vae
from diffusers import DDPMScheduler
from PIL import Image

import ldm_vae.train.sample
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.train.cli import main

# one worker under `pytest -n 2`, so the session-scoped fixtures are built once
pytestmark = pytest.mark.xdist_group("test_sample")

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="session")
def pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "pipeline"
    pipe = LatentDiffusionPipeline(
        vae=tiny_vae("kl"),
        unet=tiny_unet(4, num_class_embeds=len(CLASSES) + 1),
        scheduler=DDPMScheduler(num_train_timesteps=50, clip_sample=False),
        class_names=CLASSES,
    )
    pipe.save_pretrained(folder)
    return folder


def sample_args(pipeline_dir, out, *extra: str) -> list[str]:
    return ["sample", "--pipeline", str(pipeline_dir), "--out", str(out), "--steps", "2", *extra]


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm"])
def test_sample_writes_one_labelled_row_per_class(pipeline_dir, tmp_path, scheduler):
    out = tmp_path / "grid.png"
    assert main(sample_args(pipeline_dir, out, "--per-class", "3", "--scheduler", scheduler)) == 0
    width, height = Image.open(out).size
    assert height == 2 + 3 * (16 + 2)  # 3 class rows of 16 px images, 2 px padding
    assert width > 2 + 3 * (16 + 2)  # the images plus the name column


def test_sample_takes_classes_by_name_or_id_and_refuses_unknown_ones(pipeline_dir, tmp_path, capsys):
    assert main(sample_args(pipeline_dir, tmp_path / "two.png", "--classes", "triangle,0")) == 0
    assert Image.open(tmp_path / "two.png").size[1] == 2 + 2 * (16 + 2)
    assert main(sample_args(pipeline_dir, tmp_path / "bad.png", "--classes", "hexagon")) == 2
    assert "class label 'hexagon' is not a class name" in capsys.readouterr().err
    assert main(sample_args(tmp_path / "nothing", tmp_path / "x.png")) == 2
    assert "not a saved pipeline" in capsys.readouterr().err


def test_sample_fid_uses_the_given_inception_file_or_names_it(pipeline_dir, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "pt_inception.pth"
    fid_args = ["--fid-data", "builtin:shapes", "--fid-samples", "6", "--builtin-samples", "12"]
    assert main(sample_args(pipeline_dir, tmp_path / "a.png", *fid_args, "--inception", str(missing))) == 2
    assert f"--inception (needed by sample FID): file not found: {missing}" in capsys.readouterr().err

    monkeypatch.setattr(ldm_vae.train.sample, "load_inception", lambda path, key, needed_by: RandomFeatures())
    assert main(sample_args(pipeline_dir, tmp_path / "b.png", *fid_args, "--inception", "any.pth")) == 0
    result = json.loads((tmp_path / "b.fid.json").read_text())
    assert result["data"] == "builtin:shapes" and result["fid"] >= 0
