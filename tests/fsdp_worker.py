"""Started by tests/test_sharding.py as two gloo processes (torchrun, CPU): trains a tiny diffusers UNet under
FSDP2, sharded as configs/accelerate/fsdp.yaml shards it (each ResnetBlock2D, then the root), checkpoints it
the way the spine does, and takes one more step.

OUT/checkpoint/ gets unet.safetensors (ldm_vae.training.sharding.full_state_dict), optimizer.bin (what
accelerate writes with fsdp_state_dict_type FULL_STATE_DICT) and ema.pt (PortableEMA.state_dict);
OUT/after.pt the whole weights and EMA after the next step; OUT/report.json the losses, whether the
parameters really were sharded, and how far a sharded resume of the checkpoint lands from that next step.
The test resumes the same checkpoint on one process with the functions below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import tiny_unet
from diffusers.models.resnet import ResnetBlock2D
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ldm_vae.training.sharding import PortableEMA, full_state_dict, load_full_state_dict

WHOLE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # out: gathered on the main process
WHOLE_IN = StateDictOptions(full_state_dict=True)  # in: every process holds the whole state


def build(sharded: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, PortableEMA]:
    """The same initial UNet on every process; its optimizer and EMA made after sharding, as in start_run."""
    torch.manual_seed(0)
    unet = tiny_unet(4).train()
    if sharded:
        for module in unet.modules():
            if isinstance(module, ResnetBlock2D):
                fully_shard(module)
        fully_shard(unet)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    return unet, optimizer, PortableEMA(unet.parameters(), decay=0.9)


def fixed_batch(rank: int, world: int) -> tuple[torch.Tensor, ...]:
    """This process's share of one global batch of 4: (latents, noise, timesteps, labels)."""
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    labels = torch.randint(0, 4, (4,), generator=generator)
    return tuple(t.chunk(world)[rank] for t in (latents, noise, timesteps, labels))


def train_step(unet: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: PortableEMA, batch) -> float:
    """Epsilon-prediction MSE, clip, AdamW, EMA: the spine's order. Under FSDP the gradients are averaged
    over the processes, so two halves of a batch step exactly like the whole batch on one process."""
    latents, noise, timesteps, labels = batch
    loss = (unet(latents + noise, timesteps, class_labels=labels).sample - noise).square().mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(unet.parameters())
    return loss.item()


def whole_state(unet: torch.nn.Module, ema: PortableEMA) -> dict:
    """Every process calls; the main process gets the weights and EMA as whole tensors."""
    return {"weights": full_state_dict(unet), "ema": ema.state_dict()["shadow_params"]}


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = fixed_batch(rank, world)
    unet, optimizer, ema = build(sharded=True)
    losses = [train_step(unet, optimizer, ema, batch) for _ in range(4)]

    # checkpoint: collectives on every process, files from the main process
    weights, optim_state = full_state_dict(unet), get_optimizer_state_dict(unet, optimizer, options=WHOLE)
    ema_state = ema.state_dict()
    folder = out / "checkpoint"
    if rank == 0:
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "unet.safetensors")
        torch.save(optim_state, folder / "optimizer.bin")
        torch.save(ema_state, folder / "ema.pt")
    dist.barrier()

    train_step(unet, optimizer, ema, batch)
    after = whole_state(unet, ema)

    # resume the checkpoint into a fresh sharded model, as `accelerator.load_state` does under FSDP
    resumed, resumed_optimizer, resumed_ema = build(sharded=True)
    load_full_state_dict(resumed, load_file(folder / "unet.safetensors"))
    optim_state = torch.load(folder / "optimizer.bin")
    set_optimizer_state_dict(
        resumed, resumed_optimizer, optim_state, options=StateDictOptions(full_state_dict=True)
    )
    resumed_ema.load_state_dict(torch.load(folder / "ema.pt", weights_only=False))
    train_step(resumed, resumed_optimizer, resumed_ema, batch)
    again = whole_state(resumed, resumed_ema)

    if rank == 0:
        torch.save(after, out / "after.pt")
        report = {
            "world": world,
            "losses": losses,
            "all_parameters_sharded": all(
                isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in unet.parameters()
            ),
            "sharded_resume_max_abs_diff": max(
                max((after["weights"][k] - again["weights"][k]).abs().max().item() for k in after["weights"]),
                max((a - b).abs().max().item() for a, b in zip(after["ema"], again["ema"], strict=True)),
            ),
        }
        (out / "report.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
