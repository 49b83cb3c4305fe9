"""Two real processes: `torchrun --nproc_per_node 2` on CPU (gloo), against one process, same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, TINY_VQ_OVERRIDES, assert_same_training, tiny_config
from ldm_vae.train.autoencoder import train

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_torchrun_two_processes_stay_in_sync_and_match_one_process(tmp_path, kind):
    """For VQ the digests cover the codebook and its EMA statistics: every rank holds the same codebook."""
    gan = ["train.max_steps=4", "loss.disc_start_steps=2", "loss.disc_warmup_steps=1"]
    two = tmp_path / "two"
    preset, tiny = ("vq-tiny", TINY_VQ_OVERRIDES) if kind == "vq" else ("kl-tiny", TINY_OVERRIDES)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(
            "-m",
            "ldm_vae.train.autoencoder",
            preset,
            *tiny,
            *gan,
            "train.batch_size=2",
            f"run_dir={two}",
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert len(metrics["replica_digests"]) == 2 and metrics["replicas_identical"]

    cfg = tiny_config(tmp_path / "one", *gan, "train.batch_size=4", kind=kind)
    one = train(cfg)
    assert json.loads((one / "metrics.json").read_text())["samples_seen"] == metrics["samples_seen"]
    assert_same_training(two, one, cfg)
