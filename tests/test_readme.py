"""The README's `ldm-vae train-ae` and `train-ldm` examples resolve to valid configs (run with --dry-run)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ldm_vae.train.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = [
    line.split("#")[0].strip()
    for line in README.read_text().splitlines()
    if line.startswith(("ldm-vae train-ae ", "ldm-vae train-ldm ")) and "..." not in line
]


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 4 and any(example.startswith("ldm-vae train-ldm") for example in EXAMPLES)


@pytest.mark.parametrize("command", EXAMPLES)
def test_readme_example_resolves(command, capsys):
    args = shlex.split(command)[1:]
    assert main([*args, "--dry-run"]) == 0, capsys.readouterr().err
