"""The distribution installs one import name, and the console script works outside the checkout."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_holds_only_the_ldm_vae_import_name(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ldm_vae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"ldm_vae"}, top_level
    assert "ldm_vae/train/autoencoder.py" in names and "ldm_vae/pipelines/latent_diffusion.py" in names
    assert "ldm_vae/configs/kl-tiny.yaml" in names  # presets travel with the wheel
    # every module of the checkout, subpackages included (setuptools only warns about an unlisted one)
    folders = {"ldm_vae": "ldm_vae", "train": "ldm_vae/train", "pipelines": "ldm_vae/pipelines"}
    for folder, installed in folders.items():
        for module in (REPO / folder).rglob("*.py"):
            path = f"{installed}/{module.relative_to(REPO / folder).as_posix()}"
            assert path in names, f"{path}: not in the wheel (pyproject.toml [tool.setuptools] packages)"


def test_console_script_runs_outside_the_checkout_without_importing_torch(tmp_path):
    """`ldm-vae --help` and a mistyped key answer at once: the CLI imports a job only when it runs."""
    script = [sys.executable, "-c", "import sys; from ldm_vae.train.cli import main; sys.exit(main())"]
    probe = (
        "import sys; from ldm_vae.train.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    shown = subprocess.run([*script, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "train-ae" in shown.stdout and "export" in shown.stdout
    bad = subprocess.run(
        [sys.executable, "-c", probe, "train-ae", "kl-tiny", "loss.kl_wieght=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == bad.stderr.strip().splitlines()[0]  # one line
    assert "loss.kl_wieght: unknown config key" in bad.stderr
    assert time.perf_counter() - start < 30  # generous: the figure itself is measured in the README


@pytest.mark.slow
def test_argparse_commands_report_bad_options_on_one_line(tmp_path):
    usage = subprocess.run(
        [
            sys.executable,
            "-m",
            "ldm_vae.train.cli",
            "sample",
            "--pipeline",
            "x",
            "--out",
            "y.png",
            "--steps",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 2
    assert usage.stderr.strip().count("\n") == 0 and "--steps" in usage.stderr and ">= 1" in usage.stderr
