"""FSDP2 on CPU (ldm_vae.training.sharding): two gloo processes train sharded, and their checkpoint resumes
on one process exactly where the sharded run went on.

accelerate only shards on accelerators (on CPU its FSDP setting is ignored), so the worker calls torch's
`fully_shard` itself, the way accelerate does with configs/accelerate/fsdp.yaml, and checkpoints through the
same functions the spine uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_worker import build, fixed_batch, train_step, whole_state
from safetensors.torch import load_file

from ldm_vae.training.sharding import load_full_state_dict

TESTS = Path(__file__).resolve().parent


# two torchrun processes: about 20 s on 2 cores; one worker under `pytest -n 2` (a session fixture)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_sharding")]


@pytest.fixture(scope="session")
def sharded_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    completed = subprocess.run(
        [*command, str(TESTS / "fsdp_worker.py"), str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_two_processes_train_a_sharded_unet_and_resume_it_sharded(sharded_run):
    report = json.loads((sharded_run / "report.json").read_text())
    assert report["world"] == 2 and report["all_parameters_sharded"]
    assert report["losses"][-1] < report["losses"][0]  # the same batch each step: the loss falls
    assert report["sharded_resume_max_abs_diff"] == 0


def test_a_checkpoint_written_under_fsdp_resumes_on_one_process(sharded_run):
    """Whole weights, the name-keyed optimizer state and the gathered EMA load into an unsharded model;
    its next step on the whole batch matches the sharded run's next step on two halves of it (to fp32
    summation order: one mean of 4 against the mean of two means of 2, amplified a little by Adam)."""
    folder = sharded_run / "checkpoint"
    unet, optimizer, ema = build(sharded=False)
    load_full_state_dict(unet, load_file(folder / "unet.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.bin"))  # what accelerate.load_state does
    ema.load_state_dict(torch.load(folder / "ema.pt", weights_only=False))
    train_step(unet, optimizer, ema, fixed_batch(rank=0, world=1))

    expected, resumed = torch.load(sharded_run / "after.pt"), whole_state(unet, ema)
    assert expected["weights"].keys() == resumed["weights"].keys()
    for key, value in expected["weights"].items():
        torch.testing.assert_close(resumed["weights"][key], value, rtol=0, atol=1e-5)
    for a, b in zip(expected["ema"], resumed["ema"], strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
