"""What the spine does differently when accelerate shards the models (FSDP2, configs/accelerate/fsdp.yaml).

Under FSDP each process holds a 1/N slice of every parameter (a DTensor). A checkpoint must still resume
on one process, under DDP or under FSDP with another process count, so it always holds whole tensors:

- model weights: `full_state_dict` gathers them (a collective: every process calls it) under the unwrapped
  model's keys; `load_full_state_dict` cuts them back into whatever layout the loading run has;
- the optimizer: accelerate writes it whole itself with `fsdp_state_dict_type: FULL_STATE_DICT`, keyed
  by parameter name, which a plain `Optimizer.load_state_dict` maps back by parameter order;
- the EMA (`PortableEMA`): made after `prepare`, it is sharded like the parameters it follows (no extra
  memory or traffic per step) and gathered whole into the checkpoint.

Work that runs on the main process alone (image grids, the export at the end) would wait forever on the
other processes' shards, so sharded runs skip it and are exported from their last checkpoint afterwards.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether `prepare` shards the models (accelerate launched with an FSDP config)."""
    return accelerator.distributed_type == DistributedType.FSDP


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of an unwrapped model (plain, DDP's inner module or FSDP-sharded), on the CPU.

    Under FSDP a collective that every process must call; the tensors then arrive on the main process
    only (the others get {}), which is the one that writes them.
    """
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole weights (every process holds them) into `model`, sharding them if it is sharded."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _like(whole: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """`whole` in the layout and on the device of `current` (this process's slice when it is a shard)."""
    if isinstance(current, DTensor):  # every process holds `whole`: cut locally, no communication
        return distribute_tensor(
            whole.to(current.device), current.device_mesh, current.placements, src_data_rank=None
        )
    return whole.to(current.device)


class PortableEMA(EMAModel):
    """diffusers' EMAModel whose checkpoint holds whole tensors, also when it averages FSDP shards.

    `state_dict` gathers shards (accelerate calls it on every process, so the collective is safe);
    `load_state_dict` puts each tensor back into this run's layout and onto its device (diffusers' own
    leaves them on the CPU where accelerate loaded them).
    """

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shadow_params": [_whole(p) for p in self.shadow_params]}

    def load_state_dict(self, state_dict: dict) -> None:
        layout = list(self.shadow_params)
        super().load_state_dict(state_dict)
        self.shadow_params = [_like(w, c) for w, c in zip(self.shadow_params, layout, strict=True)]
