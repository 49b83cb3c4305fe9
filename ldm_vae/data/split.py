"""Train / held-out split by hashed sample key, stable when files are added to a folder.

Each sample's rank is sha256(f"{seed}:{key}") and the held-out set is the `held_out_samples` smallest ranks.
Adding a file can only push one old sample out of the held-out set (if the new file ranks among the
smallest), never reshuffle it, so validation numbers stay comparable while a dataset grows.
"""

import hashlib
import heapq
from typing import Protocol

from ldm_vae.errors import ConfigError


class KeyedDataset(Protocol):
    """Anything with a length and a stable name per sample (ShapesDataset, ImageFolderDataset)."""

    def __len__(self) -> int: ...

    def sample_key(self, i: int) -> str: ...


def _rank(seed: int, key: str) -> bytes:
    """Sort key of one sample: uniform, independent of the other samples."""
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def train_held_out_split(
    dataset: KeyedDataset, held_out_samples: int, seed: int
) -> tuple[list[int], list[int]]:
    """(train_indices, held_out_indices): disjoint, both ascending, together every index of `dataset`."""
    num_samples = len(dataset)
    if not 0 <= held_out_samples < num_samples:
        raise ConfigError(
            f"data.held_out_samples={held_out_samples} must be in [0, {num_samples - 1}] for a dataset of "
            f"{num_samples} samples, so at least one sample is left to train on; lower it"
        )
    smallest = heapq.nsmallest(
        held_out_samples, range(num_samples), key=lambda i: _rank(seed, dataset.sample_key(i))
    )
    held_out = sorted(smallest)
    held_out_set = set(held_out)
    train = [i for i in range(num_samples) if i not in held_out_set]
    return train, held_out
