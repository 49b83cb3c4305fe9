"""The latent store read as a training stream: randomness keyed by stream position, for exact resume."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ldm_vae.latents.reader import LatentDataset
from ldm_vae.seeds import derive_seed


class PositionSeededLatents(Dataset):
    """`LatentDataset` indexed by `StreamSampler` keys (index, position).

    The posterior noise and the flip of stream position p are drawn from torch's RNG seeded with
    (seed, p) inside a forked RNG state, so they do not depend on DataLoader workers or on where a run
    was resumed: a resumed diffusion run reads exactly what the uninterrupted one did.
    """

    def __init__(self, store: LatentDataset, seed: int):
        self.store = store
        self.seed = seed

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, position = key
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(derive_seed(self.seed, "latent_read", position))
            return self.store[index]
