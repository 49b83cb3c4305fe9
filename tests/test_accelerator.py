"""Scale-out on accelerate: the launch configs in configs/accelerate/ and the SLURM example, run on CPU.

The configs are for GPUs, but accelerate's launcher starts the same processes on a CPU machine (gloo), so
each config is really launched here: the processes find each other and receive the settings the config
names. `gpu`-marked tests (skipped without CUDA, `make test-gpu`) check the jobs on an accelerator.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType, DynamoBackend
from accelerate.utils.dataclasses import get_module_class_from_name
from conftest import tiny_unet, tiny_vae

from ldm_vae.training.accelerator import build_accelerator

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "accelerate"
WORKER = Path(__file__).resolve().parent / "accelerate_launch_worker.py"


def accelerate_launch(config: str, *options: str, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    command += ["--config_file", str(CONFIGS / config), *options, str(WORKER), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen(command, cwd=REPO, env=env, **output)


def reports(out: Path, processes: int) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(processes)]


def finish(launcher: subprocess.Popen) -> None:
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-3000:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "name, kind",
    [
        ("ddp.yaml", DistributedType.MULTI_GPU),
        ("ddp-multinode.yaml", DistributedType.MULTI_GPU),
        ("fsdp.yaml", DistributedType.FSDP),
    ],
)
def test_each_launch_config_is_a_valid_accelerate_config(name, kind):
    """accelerate's own loader rejects unknown keys; this is what `accelerate launch --config_file` reads."""
    config = ClusterConfig.from_yaml_file(CONFIGS / name)
    assert config.distributed_type == kind and config.num_processes >= 2
    if kind == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_reshard_after_forward"]
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # resumable on one process


def test_fsdp_wraps_a_class_both_trained_models_contain():
    """accelerate refuses to prepare a model lacking a class named in fsdp_transformer_layer_cls_to_wrap."""
    fsdp = ClusterConfig.from_yaml_file(CONFIGS / "fsdp.yaml").fsdp_config
    wrap = fsdp["fsdp_transformer_layer_cls_to_wrap"]
    for model in (tiny_unet(4), tiny_vae("kl")):
        for name in wrap.split(","):
            assert get_module_class_from_name(model, name) is not None, (type(model).__name__, name)


def test_slurm_example_is_valid_bash_and_its_launch_line_parses_in_accelerate():
    script = CONFIGS / "slurm.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    launch = script.read_text().split("bin/accelerate launch", 1)[1].split('-m "$@"')[0]
    words = [word.strip('"\\') for word in launch.split() if word.strip('"\\')]
    environment = {  # what the script exports on a 2-node job, node 1
        "$ACCELERATE_CONFIG": str(CONFIGS / "ddp-multinode.yaml"),
        "$NUM_NODES": "2",
        "$NUM_PROCESSES": "16",
        "$SLURM_NODEID": "1",
        "$MAIN_ADDR": "10.0.0.1",
        "$MAIN_PORT": "29123",
    }
    words = [environment.get(word, word) for word in words]
    args = launch_command_parser().parse_args([*words, "-m", "ldm_vae.train.ldm"])
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, 1)
    assert (args.main_process_ip, args.main_process_port) == ("10.0.0.1", 29123)
    assert args.config_file.endswith("ddp-multinode.yaml") and args.module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml"])
def test_launch_config_starts_two_processes_that_find_each_other(tmp_path, name):
    """One machine: `accelerate launch --config_file ... --num_processes 2` (gloo here, NCCL on GPUs)."""
    finish(accelerate_launch(name, "--num_processes", "2", out=tmp_path))
    for report in reports(tmp_path, 2):
        assert report["world"] == 2 and report["ranks_sum"] == 1 + 2
    if name == "fsdp.yaml":  # the FSDP settings reach the processes as a job's Accelerator() reads them
        assert reports(tmp_path, 2)[0]["fsdp"] == {
            "version": 2,
            "reshard_after_forward": True,
            "wrap_classes": ["ResnetBlock2D"],
            "wrap_policy": "transformer_auto_wrap_policy",
        }


@pytest.mark.slow
def test_multinode_config_two_launchers_meet_at_the_main_address(tmp_path):
    """Two `machines` on this one: a launcher per machine rank, as slurm.sbatch starts them."""
    common = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    common += ["--main_process_port", str(free_port())]
    launchers = [
        accelerate_launch("ddp-multinode.yaml", *common, "--machine_rank", str(rank), out=tmp_path)
        for rank in (0, 1)
    ]
    for launcher in launchers:
        finish(launcher)
    for report in reports(tmp_path, 2):
        assert report["world"] == 2 and report["ranks_sum"] == 1 + 2


def test_a_second_job_in_one_process_gets_its_own_compile_and_precision(tmp_path):
    """accelerate keeps one AcceleratorState per process: without the reset in build_accelerator a second
    job would keep the first one's (eager) dynamo backend silently, and refuse another precision."""
    build_accelerator(tmp_path, "no", 1, use_compile=False)
    second = build_accelerator(tmp_path, "bf16", 1, use_compile=True)
    assert second.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
    assert second.mixed_precision == "bf16"
