"""Two real processes: `torchrun --nproc_per_node 2` on CPU (gloo), against one, same global batch."""

from __future__ import annotations

import json

import pytest
from conftest import (
    PLAIN_STEPS,
    TINY_OVERRIDES,
    TINY_VQ_OVERRIDES,
    assert_same_training,
    tiny_config,
    torchrun,
)

GAN = ["train.max_steps=4", "loss.disc_start_steps=2", "loss.disc_warmup_steps=1", *PLAIN_STEPS]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_torchrun_two_processes_stay_in_sync_and_match_one_process(tmp_path, kind):
    """Both arms are torchrun launches with one thread per process. For VQ the digests cover the
    codebook and its EMA statistics: every rank holds the same codebook."""
    preset, tiny = ("vq-tiny", TINY_VQ_OVERRIDES) if kind == "vq" else ("kl-tiny", TINY_OVERRIDES)
    runs = {}
    for processes in (2, 1):
        runs[processes] = tmp_path / f"procs{processes}"
        batch = 4 // processes
        torchrun(
            "ldm_vae.train.autoencoder",
            processes,
            *(preset, *tiny, *GAN, f"train.batch_size={batch}", f"run_dir={runs[processes]}"),
        )
    two, one = (json.loads((runs[n] / "metrics.json").read_text()) for n in (2, 1))
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert len(two["replica_digests"]) == 2 and two["replicas_identical"]
    assert one["samples_seen"] == two["samples_seen"]
    assert_same_training(runs[2], runs[1], tiny_config(runs[1], *GAN, kind=kind))
