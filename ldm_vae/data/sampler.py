"""An endless, seeded stream of training samples, sliced across processes (EDM2's InfiniteSampler idea).

The stream is epoch after epoch of seeded permutations of the training indices. Stream position p
yields the key (index, p); `RandomFlipView` turns p into the sample's augmentation, so a sample's
pixels depend only on (seed, p). Epoch e's permutation is the `data_order` stream at position e
(ldm_vae/seeds.py). Every micro-step consumes one block of `batch_size * num_processes`
consecutive positions and process r takes the r-th slice of it. Hence:
  * resuming is starting at `start_position` = samples already seen: no batch skipping, no RNG state;
  * N processes at batch b see exactly the samples one process sees at batch N*b, in the same order.
Any sample can be at any position, so every process and worker reads from every shard of a sharded
source (one positional read a sample). `ShardStreamSampler` (`data.order=shards`) gives each process and
DataLoader worker its own shards instead, for storage where reading shard by shard is much faster, at the
price of weaker guarantees (see its docstring).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ldm_vae.errors import ConfigError
from ldm_vae.seeds import numpy_generator, torch_generator


class _PositionSampler(Sampler[tuple[int, int]]):
    """(index, position) keys of process `rank`'s slice of each block; subclasses map a position to an
    index (`_index_at`)."""

    def __init__(self, batch_size: int, rank: int, num_processes: int, seed: int, start_position: int):
        block = batch_size * num_processes
        if start_position % block:
            raise ValueError(f"start_position={start_position} is not a multiple of the block size {block}")
        self.batch_size = batch_size
        self.rank = rank
        self.num_processes = num_processes
        self.seed = seed
        self.start_position = start_position

    def _index_at(self, position: int) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[int, int]]:
        block_start = self.start_position
        while True:
            first = block_start + self.rank * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self._index_at(position), position
            block_start += self.batch_size * self.num_processes


class StreamSampler(_PositionSampler):
    """The stream in global order (the module docstring): epoch e is a permutation of all `indices`."""

    def __init__(
        self,
        indices: Sequence[int],
        batch_size: int,
        rank: int,
        num_processes: int,
        seed: int,
        start_position: int = 0,
    ):
        super().__init__(batch_size, rank, num_processes, seed, start_position)
        self.indices = list(indices)
        self._epoch = -1
        self._permutation: list[int] = []

    def _index_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.indices))
        if epoch != self._epoch:
            generator = torch_generator(self.seed, "data_order", epoch)
            self._permutation = torch.randperm(len(self.indices), generator=generator).tolist()
            self._epoch = epoch
        return self.indices[self._permutation[offset]]


def shard_members(shards: Sequence[range], indices: Sequence[int]) -> list[np.ndarray]:
    """The `indices` (e.g. the training split) that fall in each shard, one int64 array per shard;
    `shards` are a source's consecutive index ranges in order (`WebDatasetShards.shard_ranges()`)."""
    chosen = np.sort(np.asarray(indices, dtype=np.int64))  # (n,)
    starts = np.array([shard.start for shard in shards], dtype=np.int64)  # (s,) ascending
    owner = np.searchsorted(starts, chosen, side="right") - 1  # (n,) the shard of each index
    bounds = np.searchsorted(owner, np.arange(len(shards) + 1))  # (s + 1,)
    return [chosen[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class ShardStreamSampler(_PositionSampler):
    """The stream in shard order (`data.order=shards`): each reader reads its own run of shards.

    A reader is one (process, DataLoader worker): R = processes x max(1, workers). Epoch e orders the
    shards by the `shard_order` stream at position e, and the samples inside each shard by a second draw
    of it; reader j reads the j-th of R contiguous runs of that order, m = n // R samples each. So:
      * each sample is read at most once per epoch; the last n - R*m of the epoch's order (fewer than R
        samples, a different set each epoch) are left out of that epoch;
      * readers share no shard when every shard holds the same number of training samples and R divides
        the shard count; otherwise a shard where a run ends is read in part by two readers (at most R - 1
        such shards per epoch, never a sample twice);
      * the stream is a function of (seed, p, R, batch size): a resumed run continues it exactly with the
        same processes, workers and batch size, but a run is not equal to one with other R or B.
    Process r's micro-batch t belongs to reader (t*N + r) mod R: with the DataLoader's round-robin, each
    worker gets the batches of one reader. Position p is chunk q = p // B, reader q mod R, at offset
    (q // R) * B + p mod B of that reader's stream.
    """

    def __init__(
        self,
        shards: Sequence[np.ndarray],
        batch_size: int,
        rank: int,
        num_processes: int,
        num_workers: int,
        seed: int,
        start_position: int = 0,
    ):
        super().__init__(batch_size, rank, num_processes, seed, start_position)
        members = np.concatenate(shards)  # (n,) training indices, shard by shard
        self.readers = num_processes * max(1, num_workers)
        self.per_reader = len(members) // self.readers  # m
        if self.per_reader == 0:
            raise ConfigError(
                f"data.order=shards: {len(members)} training samples cannot be spread over {self.readers} "
                "readers (processes x DataLoader workers); lower data.num_workers or use data.order=global"
            )
        self._members = members
        self._owner = np.repeat(np.arange(len(shards)), [len(s) for s in shards])  # (n,) shard of each
        self._num_shards = len(shards)
        self._orders: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(n,) training indices in epoch `epoch`'s order: seeded shard order, shuffled inside each."""
        if epoch not in self._orders:
            generator = numpy_generator(self.seed, "shard_order", epoch)
            rank_of_shard = np.argsort(generator.permutation(self._num_shards))  # (s,)
            inside = generator.random(len(self._members))  # (n,) sort keys inside each shard
            order = np.lexsort((inside, rank_of_shard[self._owner]))  # (n,)
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}  # batches span two
            self._orders[epoch] = self._members[order]
        return self._orders[epoch]

    def reader_of(self, position: int) -> int:
        return (position // self.batch_size) % self.readers

    def _index_at(self, position: int) -> int:
        chunk, within = divmod(position, self.batch_size)
        offset = (chunk // self.readers) * self.batch_size + within  # in reader chunk % R's own stream
        epoch, offset = divmod(offset, self.per_reader)
        return int(self.epoch_order(epoch)[self.reader_of(position) * self.per_reader + offset])


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
    shards: Sequence[range] | None = None,
) -> DataLoader:
    """The DataLoader of a training job: process `rank` reads its slice of the global stream over
    `indices`, from `start_position` (samples already seen, on resume). `dataset` takes (index, position)
    keys, so whatever it draws per sample is keyed by the stream position. With `shards` (the source's
    shard ranges) the stream is in shard order (`ShardStreamSampler`)."""
    if shards is None:
        sampler = StreamSampler(indices, batch_size, rank, num_processes, seed, start_position)
    else:
        members = shard_members(shards, indices)
        sampler = ShardStreamSampler(
            members, batch_size, rank, num_processes, num_workers, seed, start_position
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_interrupts_in_worker,
    )
