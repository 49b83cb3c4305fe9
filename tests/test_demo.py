"""`ldm-vae demo`: the whole chain from nothing to a report, and a rerun that skips finished stages."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from ldm_vae.data import ShapesDataset
from ldm_vae.train.cli import main
from ldm_vae.train.demo import CLASS_GUIDANCE_SCALES

_spec = importlib.util.spec_from_file_location(
    "judge_noise", Path(__file__).resolve().parent.parent / "benchmarks" / "judge_noise.py"
)
judge_noise = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(judge_noise)

# The chain at toy size: 16 px shapes, a few steps per stage; the figures are meaningless, the plumbing real.
TOY = [
    *("--ae", "data.resolution_px=16", "--ae", "data.builtin_samples=96", "--ae", "data.held_out_samples=16"),
    *("--ae", "train.max_steps=4", "--ae", "export.scaling_samples=32", "--ae", "data.num_workers=0"),
    *(
        "--ldm",
        "train.max_steps=4",
        "--ldm",
        "model.block_out_channels=[16,32]",
        "--ldm",
        "data.num_workers=0",
    ),
    *(
        "--ldm",
        "model.norm_num_groups=8",
        "--ldm",
        "model.attention_head_dim=8",
        "--ldm",
        "train.batch_size=8",
    ),
    *("--ldm", "sample.per_class=1", "--ldm", "sample.num_inference_steps=2"),
    *("--samples-per-class", "2", "--classifier-steps", "3"),
]


def test_demo_rejects_a_bad_override_before_any_work(tmp_path, capsys):
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--ldm", "train.max_stepz=4"]) == 2
    assert "train.max_stepz: unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def labelled_folder(root, classes: int, per_class: int):
    """`classes` class sub-folders of 16 px PNGs: the first shape kinds of builtin:shapes."""
    shapes = ShapesDataset(400, 16, seed=0)
    counts = dict.fromkeys(range(classes), 0)
    for i in range(len(shapes)):
        label = int(shapes.factors(i)["label"])
        if counts.get(label, per_class) < per_class:
            folder = root / f"kind{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((shapes.render(i) * 255).round().astype("uint8")).save(folder / f"{i:04d}.png")
            counts[label] += 1
    return root


@pytest.mark.slow
def test_demo_runs_the_chain_on_the_data_it_is_given_and_reports_every_stage(tmp_path, capsys):
    """3 classes, not the shapes' 6: the store, the pipeline, the judge and the report all see the folder;
    a rerun skips the finished stages."""
    folder = labelled_folder(tmp_path / "images", classes=3, per_class=16)
    run_dir = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(run_dir), "--data", str(folder), *TOY]) == 0
    for path in ("autoencoder/export/config.json", "latents/manifest.json", "ldm/pipeline/model_index.json"):
        assert (run_dir / path).is_file(), path
    manifest = json.loads((run_dir / "latents" / "manifest.json").read_text())
    assert manifest["classes"] == ["kind0", "kind1", "kind2"]
    assert manifest["num_samples"] == 48 - 16 and manifest["held_out"]["samples"] == 16  # what is scored
    pipeline_index = json.loads((run_dir / "ldm" / "pipeline" / "model_index.json").read_text())
    assert pipeline_index["class_names"] == ["kind0", "kind1", "kind2"]
    figures = json.loads((run_dir / "demo.json").read_text())
    assert figures["data"] == {"source": str(folder), "resolution_px": 16, "classes": 3}
    assert figures["ldm"]["reload_max_abs_diff"] == 0.0
    swept = {f"guidance_{g:g}" for g in CLASS_GUIDANCE_SCALES}
    assert set(figures["samples"]) >= {*swept, "guidance_2", "classifier_real_held_out_accuracy"}
    assert 0 <= figures["samples"]["guidance_2"]["accuracy"] <= 1
    assert 0 <= figures["samples"]["reconstructions"]["accuracy"] <= 1
    report = (run_dir / "report.md").read_text()
    assert f"Data `{folder}`: 16 px, 3 classes" in report

    noise = judge_noise.rescore(run_dir, judges=2)  # raises unless judge 0 reproduces demo.json
    assert [row["seed"] for row in noise["per_judge"]] == [0, 1]
    assert noise["summary"]["guidance_3.accuracy"]["values"] == [
        row["guidance_3"]["accuracy"] for row in noise["per_judge"]
    ]
    assert noise["per_judge"][0]["guidance_3"] == figures["samples"]["guidance_3"]
    for text in ("held-out PSNR", "scaling_factor", "class accuracy", "![samples](ldm/samples.png)"):
        assert text in report, text
    assert (run_dir / "guidance.png").is_file() and "![guidance](guidance.png)" in report
    assert "ldm-vae train-ldm ldm-tiny" in report  # the commands that reproduce each stage
    assert "reconstructions of them (the ceiling)" in report

    capsys.readouterr()
    assert main(["demo", "--run-dir", str(run_dir), "--data", str(folder), *TOY]) == 0
    out = capsys.readouterr().out
    assert "1/4 autoencoder: finished earlier, skipped" in out
    assert "3/4 latent diffusion: finished earlier, skipped" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ae", "data.source=builtin:shapes-text"], "the demo's data is --data"),
        (["--ae", "run_dir=elsewhere"], "the demo sets run_dir itself"),
        (["--ldm", "data.latents=elsewhere"], "the demo sets data.latents itself"),
        (["--ldm", "model.latent_channels=8"], "the demo's autoencoder makes 4"),
        (["--ldm", "model.latent_size=4"], "the demo's latents are 8x8"),
        (
            ["--ae", "data.resolution_px=24", "--ldm", "model.block_out_channels=[32,32,64]"]
            + ["--ldm", "model.attention_levels=[false,false,true]"],
            "levels do not divide the 6x6 latents",
        ),
        (["--ldm", "model.conditioning=none", "--ldm", "sample.guidance_scale=1"], "scores samples by class"),
        (["--data", "builtin:nothing"], "unknown builtin dataset"),
        (["--ae", "data.held_out_samples=3000"], "5192 training images: the judge needs at least 6000"),
    ],
)
def test_demo_refuses_stages_that_disagree_before_any_work(tmp_path, capsys, arguments, message):
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_rerun_on_other_data(tmp_path, capsys):
    ae_dir = tmp_path / "demo" / "autoencoder"
    ae_dir.mkdir(parents=True)
    (ae_dir / "config.yaml").write_text("data:\n  source: /some/folder\n")
    assert main(["demo", "--run-dir", str(tmp_path / "demo")]) == 2
    assert (
        "data.source='/some/folder', not 'builtin:shapes': use another --run-dir" in capsys.readouterr().err
    )


TOY_TEXT = [
    *TOY[: TOY.index("--ldm")],  # the same tiny autoencoder
    *("--ldm", "model.block_out_channels=[16,32]", "--ldm", "model.attention_head_dim=8"),
    *("--ldm", "text.hidden_size=16", "--ldm", "text.num_layers=1", "--ldm", "data.num_workers=0"),
    *("--ldm", "train.batch_size=8", "--ldm", "train.max_steps=4", "--ldm", "sample.per_class=1"),
    *("--ldm", "sample.num_inference_steps=2", "--samples-per-class", "2", "--classifier-steps", "3"),
]


@pytest.mark.slow
def test_text_demo_trains_text_to_image_and_scores_seen_and_unseen_prompts(tmp_path, capsys):
    run_dir = tmp_path / "demo-text"
    assert main(["demo", "--text", "--run-dir", str(run_dir), *TOY_TEXT]) == 0
    manifest = json.loads((run_dir / "latents" / "manifest.json").read_text())
    assert manifest["captioned_samples"] == manifest["num_samples"] == 96 - 16
    index = json.loads((run_dir / "ldm" / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    figures = json.loads((run_dir / "demo.json").read_text())
    samples = figures["samples"]
    assert figures["data"]["source"] == "builtin:shapes-text" and figures["presets"]["ldm"] == "ldm-text-tiny"
    assert set(samples) >= {"real", "reconstructions", "guidance_1", "guidance_3", "both_by_prompt"}
    assert len(samples["both_by_prompt"]) == 36 and samples["samples_per_prompt"] == 2
    for key in ("real", "reconstructions", "guidance_1", "guidance_3"):
        for group in ("seen", "unseen"):
            assert samples[key][group]["images"] > 0
            assert all(0 <= samples[key][group][factor] <= 1 for factor in ("shape", "colour", "both"))
    assert samples["guidance_3"]["unseen"]["images"] == 4 * 2  # the 4 held-out prompts, 2 samples each
    report = (run_dir / "report.md").read_text()
    assert "| images | seen: shape | colour | both | unseen: shape | colour | both |" in report
    assert "| samples, guidance 3 |" in report and report.count("* |") == 4  # held-out cells starred
    assert "ldm-vae train-ldm ldm-text-tiny" in report and "![prompt samples](prompt_samples.png)" in report
    grid = Image.open(run_dir / "prompt_samples.png")
    assert grid.height == 2 + 8 * (16 + 2)  # 8 labelled rows: 4 held-out pairs, 4 seen pairs of their words

    capsys.readouterr()
    assert main(["demo", "--text", "--run-dir", str(run_dir), *TOY_TEXT]) == 0
    out = capsys.readouterr().out
    assert "1/4 autoencoder: finished earlier, skipped" in out
    assert "3/4 latent diffusion: finished earlier, skipped" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "builtin:shapes"], "--data builtin:shapes: the text demo's judge checks"),
        (["--ldm", "model.conditioning=class"], "the demo scores samples by prompt"),
        (["--ae", "data.source=builtin:shapes"], "the demo's data is --data (now 'builtin:shapes-text')"),
    ],
)
def test_text_demo_refuses_what_it_cannot_judge_before_any_work(tmp_path, capsys, arguments, message):
    assert main(["demo", "--text", "--run-dir", str(tmp_path / "demo"), *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "demo").exists()
