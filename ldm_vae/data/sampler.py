"""An endless, seeded stream of training samples, sliced across processes (EDM2's InfiniteSampler idea).

The stream is epoch after epoch of seeded permutations of the training indices. Stream position p
yields the key (index, p); `RandomFlipView` turns p into the sample's augmentation, so a sample's
pixels depend only on (seed, p). Every micro-step consumes one block of `batch_size * num_processes`
consecutive positions and process r takes the r-th slice of it. Hence:
  * resuming is starting at `start_position` = samples already seen: no batch skipping, no RNG state;
  * N processes at batch b see exactly the samples one process sees at batch N*b, in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

# Independent random streams read at the same stream position: an autoencoder's posterior noise, a latent
# store's posterior draw and flip, and the diffusion noise, timestep and label drop. Without separate
# streams the diffusion noise of a sample would equal its posterior noise.
AUTOENCODER_NOISE_STREAM, LATENT_READ_STREAM, DIFFUSION_STREAM = 0, 1, 2


def position_seed(seed: int, position: int, stream: int = AUTOENCODER_NOISE_STREAM) -> int:
    """The seed of one stream position: the same on every process, batch layout and resume."""
    return seed * 1_000_003 + position + stream * 2**62


def position_generator(seed: int, position: int, stream: int = AUTOENCODER_NOISE_STREAM) -> torch.Generator:
    return torch.Generator().manual_seed(position_seed(seed, position, stream))


class StreamSampler(Sampler[tuple[int, int]]):
    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        rank: int,
        num_processes: int,
        seed: int,
        start_position: int = 0,
    ):
        block = batch_size * num_processes
        if start_position % block:
            raise ValueError(f"start_position={start_position} is not a multiple of the block size {block}")
        self.indices = list(indices)
        self.batch_size = batch_size
        self.rank = rank
        self.num_processes = num_processes
        self.seed = seed
        self.start_position = start_position
        self._epoch = -1
        self._permutation: list[int] = []

    def _index_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.indices))
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(len(self.indices), generator=generator).tolist()
            self._epoch = epoch
        return self.indices[self._permutation[offset]]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        block_start = self.start_position
        while True:
            first = block_start + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self._index_at(position), position
            block_start += self.batch_size * self.num_processes
