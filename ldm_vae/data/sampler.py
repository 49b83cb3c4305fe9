"""An endless, seeded stream of training samples, sliced across processes (EDM2's InfiniteSampler idea).

The stream is epoch after epoch of seeded permutations of the training indices. Stream position p
yields the key (index, p); `RandomFlipView` turns p into the sample's augmentation, so a sample's
pixels depend only on (seed, p). Epoch e's permutation is the `data_order` stream at position e
(ldm_vae/seeds.py). Every micro-step consumes one block of `batch_size * num_processes`
consecutive positions and process r takes the r-th slice of it. Hence:
  * resuming is starting at `start_position` = samples already seen: no batch skipping, no RNG state;
  * N processes at batch b see exactly the samples one process sees at batch N*b, in the same order.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ldm_vae.seeds import torch_generator


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
            generator = torch_generator(self.seed, "data_order", epoch)
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


def ignore_interrupts_in_worker(worker_id: int) -> None:
    """DataLoader workers would die on the terminal's Ctrl-C before the loop can checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stream_loader(
    dataset: Dataset,
    indices: Sequence[int],
    batch_size: int,
    rank: int,
    num_processes: int,
    seed: int,
    start_position: int,
    num_workers: int,
) -> DataLoader:
    """The DataLoader of a training job: process `rank` reads its slice of the global stream over
    `indices`, from `start_position` (samples already seen, on resume). `dataset` takes (index, position)
    keys, so whatever it draws per sample is keyed by the stream position."""
    sampler = StreamSampler(indices, batch_size, rank, num_processes, seed, start_position=start_position)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_interrupts_in_worker,
    )
