"""Started by tests/test_accelerator.py under `accelerate launch`: writes what the launcher set up as JSON.

One all-reduce over the process group proves the processes found each other; the FSDP plugin is built
from the environment the launcher exported, exactly as a job's `Accelerator()` would build it.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import FullyShardedDataParallelPlugin

state = PartialState(cpu=True)  # gloo: this machine has no GPU
ranks_sum = torch.tensor([float(state.process_index + 1)])
dist.all_reduce(ranks_sum)
report = {"rank": state.process_index, "world": state.num_processes, "ranks_sum": ranks_sum.item()}
if os.environ.get("ACCELERATE_USE_FSDP") == "true":
    plugin = FullyShardedDataParallelPlugin()
    report["fsdp"] = {
        "version": plugin.fsdp_version,
        "reshard_after_forward": plugin.reshard_after_forward,
        "wrap_classes": plugin.transformer_cls_names_to_wrap,
        "wrap_policy": plugin.auto_wrap_policy.__name__,
    }
Path(sys.argv[1], f"rank{state.process_index}.json").write_text(json.dumps(report))
# Leave together and tear the group down, as a job's `accelerator.end_training()` does: a process that exits
# with gloo's threads still running can abort ("terminate called without an active exception"), and on two
# launchers the first to leave takes the rendezvous store with it.
dist.barrier()
state.destroy_process_group()
