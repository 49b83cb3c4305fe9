"""benchmarks/recipes.py's report: arms run in separate `--arms` calls add up in one report, but only
when they were scored by the same judge; a report of other data is replaced, never mixed in."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes.py"
spec = importlib.util.spec_from_file_location("recipes_benchmark", SCRIPT)
recipes = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = recipes  # its dataclasses look their module up while the file runs
spec.loader.exec_module(recipes)


def report(judge_accuracy: float, autoencoders: dict, diffusions: dict, commands: list[str]) -> dict:
    return {
        "quick": False,
        "judge": {"classifier_real_held_out_accuracy": judge_accuracy},
        "autoencoders": autoencoders,
        "diffusions": diffusions,
        "commands": commands,
    }


def test_arms_of_the_same_judge_add_up_and_a_rerun_arm_replaces_its_row(tmp_path):
    path = tmp_path / "results-recipes.json"
    path.write_text(json.dumps(report(0.97, {"ae-c4": {"psnr_db": 25.0}}, {"ldm-v": {"a": 1}}, ["x", "y"])))
    now = report(0.97, {"ae-c4": {"psnr_db": 26.0}}, {"ldm-eps": {"a": 2}}, ["y", "z"])
    result = recipes.merged(now, path)
    assert result["autoencoders"] == {"ae-c4": {"psnr_db": 26.0}}
    assert result["diffusions"] == {"ldm-v": {"a": 1}, "ldm-eps": {"a": 2}}
    assert result["commands"] == ["x", "y", "z"]


def test_a_report_scored_by_another_judge_is_replaced(tmp_path):
    path = tmp_path / "results-recipes.json"
    path.write_text(json.dumps(report(0.93, {"ae-f2": {}}, {"ldm-v": {}}, ["x"])))
    now = report(0.97, {"ae-c4": {}}, {"ldm-eps": {}}, ["z"])
    assert recipes.merged(now, path) == now
    assert recipes.merged(now, tmp_path / "missing.json") == now


def test_every_arm_is_a_valid_config_and_every_ldm_arm_names_a_known_autoencoder():
    """A typo in an arm's overrides would otherwise surface only after the arms before it have trained."""
    from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, load_config

    configs = {
        arm.name: load_config(AutoencoderTrainConfig, arm.preset, list(arm.overrides))
        for arm in recipes.AUTOENCODERS
    }
    for arm in recipes.AUTOENCODERS:
        widths = configs[arm.name].model.block_out_channels
        assert widths == [32, 64, 64] or "block_out_channels" in str(arm.overrides)
    kinds = {
        configs[arm.name].model.quantizer.kind for arm in recipes.AUTOENCODERS if arm.preset == "vq-tiny"
    }
    assert kinds == {"vq", "fsq", "lfq"}
    for arm in recipes.DIFFUSIONS:
        assert arm.autoencoder in configs, arm.name
        load_config(LDMTrainConfig, "ldm-tiny", list(arm.overrides))
