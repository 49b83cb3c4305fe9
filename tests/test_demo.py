"""`ldm-vae demo`: the whole chain from nothing to a report, and a rerun that skips finished stages."""

from __future__ import annotations

import json

from ldm_vae.train.cli import main

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


def test_demo_runs_the_chain_and_reports_every_stage(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(run_dir), *TOY]) == 0
    for path in ("autoencoder/export/config.json", "latents/manifest.json", "ldm/pipeline/model_index.json"):
        assert (run_dir / path).is_file(), path
    figures = json.loads((run_dir / "demo.json").read_text())
    assert figures["ldm"]["reload_max_abs_diff"] == 0.0
    assert set(figures["samples"]) >= {"guidance_1", "guidance_2", "classifier_real_held_out_accuracy"}
    assert 0 <= figures["samples"]["guidance_2"]["accuracy"] <= 1
    report = (run_dir / "report.md").read_text()
    for text in ("held-out PSNR", "scaling_factor", "class accuracy", "![samples](ldm/samples.png)"):
        assert text in report, text
    assert "ldm-vae train-ldm ldm-tiny" in report  # the commands that reproduce each stage

    capsys.readouterr()
    assert main(["demo", "--run-dir", str(run_dir), *TOY]) == 0
    out = capsys.readouterr().out
    assert "1/4 autoencoder: finished earlier, skipped" in out
    assert "3/4 latent diffusion: finished earlier, skipped" in out


def test_demo_rejects_a_bad_override_before_any_work(tmp_path, capsys):
    assert main(["demo", "--run-dir", str(tmp_path / "demo"), "--ldm", "train.max_stepz=4"]) == 2
    assert "train.max_stepz: unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
