"""Train / held-out split by hashed sample key, stable when files are added to a folder.

Each sample's rank is sha256(f"{seed}:{key}") and the held-out set is the `held_out_samples` smallest ranks.
Adding a file can only push one old sample out of the held-out set (if the new file ranks among the
smallest), never reshuffle it, so validation numbers stay comparable while a dataset grows.

Hashing every key costs seconds at a million samples, so for a source with a cached index (a folder,
`wds:` shards) the held-out indices are saved next to the index and read back at the next start.
"""

import hashlib
import heapq
import os
from typing import Protocol

import numpy as np

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
    index = getattr(dataset, "index", None)  # a cache.SourceIndex: replaced, with this file, on any change
    cached = index.folder / f"held_out-{seed}-{held_out_samples}.npy" if index is not None else None
    if cached is not None and cached.is_file():
        held_out = np.load(cached).tolist()
    else:
        ranked = heapq.nsmallest(
            held_out_samples, range(num_samples), key=lambda i: _rank(seed, dataset.sample_key(i))
        )
        held_out = sorted(ranked)
        if cached is not None:
            temp = cached.with_name(f".tmp-{os.getpid()}-{cached.name}")
            np.save(temp, np.array(held_out, dtype=np.int64))
            os.replace(temp, cached)  # processes racing here write the same indices
    held_out_set = set(held_out)
    train = [i for i in range(num_samples) if i not in held_out_set]
    return train, held_out


def spread_picks(indices: list[int], count: int) -> list[int]:
    """`count` of `indices` evenly spaced from first to last (all of them if fewer): a folder lists its
    images class by class, so the first few would show, or measure, one class only."""
    if count >= len(indices):
        return list(indices)
    return [indices[i * len(indices) // count] for i in range(count)]
