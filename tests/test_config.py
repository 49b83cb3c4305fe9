"""Configs: strict keys and types, value ranges, presets, and the CLI's one-line errors (exit code 2)."""

from __future__ import annotations

import pytest

from ldm_vae.config import (
    PRESET_DIR,
    AutoencoderTrainConfig,
    LDMTrainConfig,
    load_config,
)
from ldm_vae.errors import ConfigError
from ldm_vae.train.cli import main


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_loads_and_validates(preset):
    load_config(LDMTrainConfig if preset.startswith("ldm-") else AutoencoderTrainConfig, preset)


def test_real_presets_match_ldm_architectures():
    f4 = load_config(AutoencoderTrainConfig, "kl-f4").model
    f8 = load_config(AutoencoderTrainConfig, "kl-f8").model
    assert (f4.block_out_channels, f4.layers_per_block, f4.latent_channels) == ([128, 256, 512], 2, 3)
    assert (f8.block_out_channels, f8.layers_per_block, f8.latent_channels) == ([128, 256, 512, 512], 2, 4)
    assert load_config(AutoencoderTrainConfig, "kl-f8-c16").model.latent_channels == 16


def test_overrides_are_typed():
    cfg = load_config(
        AutoencoderTrainConfig,
        "kl-tiny",
        ["loss.kl_weight=1e-4", "model.block_out_channels=[8,16]", "model.norm_num_groups=8"],
    )
    assert cfg.loss.kl_weight == pytest.approx(1e-4) and isinstance(cfg.loss.kl_weight, float)
    assert cfg.model.block_out_channels == [8, 16]
    assert load_config(AutoencoderTrainConfig, "kl-tiny", ["model.init_from=null"]).model.init_from is None


def test_text_values_stay_text():
    """YAML would read `no` as False and `2024` as an int; a string field keeps what was typed."""
    cfg = load_config(AutoencoderTrainConfig, "kl-tiny", ["train.mixed_precision=no", "run_dir=2024"])
    assert cfg.train.mixed_precision == "no" and cfg.run_dir == "2024"


def test_bare_no_in_a_yaml_file_means_the_string(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(AutoencoderTrainConfig, str(path)).train.mixed_precision == "no"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("loss.kl_wieght=1", "loss.kl_wieght: unknown config key"),
        ("nonsense=1", "nonsense: unknown config key"),
        ("train.batch_size=2.5", "train.batch_size=2.5: expected an integer"),
        ("train.batch_size=true", "train.batch_size=True: expected an integer"),
        ("data.random_flip=1", "data.random_flip=1: expected true or false"),
        ("loss.reconstruction=huber", "loss.reconstruction='huber': must be one of 'l1', 'l2'"),
        ("model.block_out_channels=64", "model.block_out_channels=64: expected a list"),
        ("optim.lr=fast", "optim.lr='fast': expected a number"),
        ("train.max_steps", "expected key=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(AutoencoderTrainConfig, "kl-tiny", [override])
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("loss.kl_weight=-1", "loss.kl_weight=-1.0: must be >= 0"),
        ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
        (
            "data.resolution_px=30",
            "data.resolution_px=30: must be divisible by the downsampling factor 4; try 28",
        ),
        (
            "model.norm_num_groups=5",
            "model.block_out_channels[0]=32: must be divisible by model.norm_num_groups=5",
        ),
        ("optim.adam_betas=[0.9]", "optim.adam_betas=[0.9]: must be two numbers in [0, 1)"),
        ("train.ema_decay=1.0", "train.ema_decay=1.0: must be in [0, 1)"),
        ("model.train_decoder_only=true", "model.train_decoder_only=true needs model.init_from"),
        (
            "model.kind=vq model.quantizer.num_codes=1",
            "model.quantizer.num_codes=1: must be in [2, 2147483647]",
        ),
        ("model.kind=vq model.quantizer.code_dim=1", "code_dim=1 with use_cosine=true: only 2 unit vectors"),
        ("model.kind=vq loss.learn_logvar=true", "loss.learn_logvar=true: only for model.kind=kl"),
        ("model.kind=vq model.quantizer.decay=1", "model.quantizer.decay=1.0: must be in (0, 1)"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    """Ranges are declared on the fields and checked, with the cross-field rules, as the config is built."""
    with pytest.raises(ConfigError) as error:
        load_config(AutoencoderTrainConfig, "kl-tiny", override.split())
    assert expected in str(error.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="kl-tiny"):
        load_config(AutoencoderTrainConfig, "kl-nope")


def test_yaml_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="train.max_stepz: unknown config key"):
        load_config(AutoencoderTrainConfig, str(path))


def test_cli_bad_key_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train-ae", "kl-tiny", f"run_dir={run_dir}", "loss.disc_wieght=0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "loss.disc_wieght: unknown config key" in err
    assert not run_dir.exists()


def test_cli_missing_lpips_weights_fail_at_start_naming_the_file(tmp_path, capsys):
    run_dir = tmp_path / "run"
    missing = tmp_path / "no-such-vgg16.pth"
    code = main(
        [
            "train-ae",
            "kl-tiny",
            f"run_dir={run_dir}",
            "loss.perceptual_weight=1",
            f"loss.lpips_vgg16_path={missing}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err and "loss.lpips_vgg16_path" in err and err.strip().count("\n") == 0
    assert not run_dir.exists()


def test_cli_dry_run_prints_the_resolved_config(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train-ae", "kl-tiny", f"run_dir={run_dir}", "train.max_steps=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 7" in out and not run_dir.exists()


def test_cli_export_of_a_folder_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
