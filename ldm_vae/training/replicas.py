"""The end-of-run check that data parallelism kept every process's weights identical."""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn


def replica_digest(models: list[nn.Module]) -> str:
    """sha256 of every parameter and buffer byte: identical on all processes iff the replicas are."""
    digest = hashlib.sha256()
    for model in models:
        for tensor in model.state_dict().values():
            digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(accelerator: Accelerator, models: list[nn.Module]) -> dict[str, object]:
    """A collective: every process's digest of its (unwrapped) models, and whether they all agree."""
    digests = gather_object([replica_digest([accelerator.unwrap_model(m) for m in models])])
    return {"replica_digests": digests, "replicas_identical": len(set(digests)) == 1}
