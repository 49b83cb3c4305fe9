"""The training stream: per-process slices of one global order (or of shard runs), resumable exactly."""

from __future__ import annotations

import itertools

import pytest
from torch.utils.data import Dataset, get_worker_info

from ldm_vae.data.sampler import ShardStreamSampler, StreamSampler, shard_members, stream_loader
from ldm_vae.errors import ConfigError


def take(sampler: StreamSampler, n: int) -> list[tuple[int, int]]:
    return list(itertools.islice(iter(sampler), n))


def test_two_processes_split_each_global_batch_of_one_process():
    indices = list(range(10, 23))  # 13 samples: epochs do not align with batches
    one = take(StreamSampler(indices, batch_size=4, rank=0, num_processes=1, seed=3), 40)
    rank0 = take(StreamSampler(indices, batch_size=2, rank=0, num_processes=2, seed=3), 20)
    rank1 = take(StreamSampler(indices, batch_size=2, rank=1, num_processes=2, seed=3), 20)
    interleaved = [
        key
        for block in range(10)
        for key in rank0[2 * block : 2 * block + 2] + rank1[2 * block : 2 * block + 2]
    ]
    assert interleaved == one


def test_each_epoch_is_a_permutation_and_epochs_differ():
    indices = list(range(8))
    keys = take(StreamSampler(indices, batch_size=4, rank=0, num_processes=1, seed=0), 16)
    first, second = [i for i, _ in keys[:8]], [i for i, _ in keys[8:]]
    assert sorted(first) == sorted(second) == indices
    assert first != second
    assert [position for _, position in keys] == list(range(16))


def test_resume_at_a_position_continues_the_same_stream():
    indices = list(range(11))
    full = take(StreamSampler(indices, batch_size=3, rank=1, num_processes=2, seed=7), 30)
    resumed = take(
        StreamSampler(indices, batch_size=3, rank=1, num_processes=2, seed=7, start_position=24), 18
    )
    assert resumed == full[12:]


def test_start_position_must_be_a_block_boundary():
    with pytest.raises(ValueError, match="block size 6"):
        StreamSampler(range(5), batch_size=3, rank=0, num_processes=2, seed=0, start_position=4)


# ---------------------------------------------------------------------------------------------------------
# shard order (data.order=shards)


def shard_stream(sizes: list[int], batch: int, rank: int, processes: int, workers: int, **kw):
    """A ShardStreamSampler over consecutive shards of `sizes` samples, and those shards as ranges."""
    bounds = list(itertools.accumulate([0, *sizes]))
    shards = [range(a, b) for a, b in itertools.pairwise(bounds)]
    members = shard_members(shards, range(bounds[-1]))
    return ShardStreamSampler(members, batch, rank, processes, workers, seed=kw.pop("seed", 5), **kw), shards


def reads_by_reader(sizes: list[int], batch: int, processes: int, workers: int, blocks: int) -> dict:
    """{reader: [index, ...]} over the first `blocks` blocks of every process."""
    found: dict[int, list[int]] = {}
    for rank in range(processes):
        sampler, _ = shard_stream(sizes, batch, rank, processes, workers)
        for index, position in take(sampler, blocks * batch):
            found.setdefault(sampler.reader_of(position), []).append(index)
    return found


def shard_of(index: int, shards: list[range]) -> int:
    return next(s for s, shard in enumerate(shards) if index in shard)


def test_shard_members_keeps_the_chosen_indices_of_each_shard():
    shards = [range(0, 3), range(3, 3), range(3, 7)]
    assert [m.tolist() for m in shard_members(shards, [6, 0, 4, 2])] == [[0, 2], [], [4, 6]]


def test_shard_order_gives_each_reader_whole_shards_when_they_divide():
    """6 shards of 4, 2 processes x 3 workers = 6 readers: one whole shard each, every sample once."""
    sizes, batch = [4] * 6, 2
    epoch = reads_by_reader(sizes, batch, processes=2, workers=3, blocks=6)  # 24 samples = one epoch
    _, shards = shard_stream(sizes, batch, 0, 2, 3)
    assert sorted(i for reads in epoch.values() for i in reads) == list(range(24))
    owned = [{shard_of(i, shards) for i in reads} for reads in epoch.values()]
    assert all(len(mine) == 1 for mine in owned) and len(set().union(*owned)) == 6
    # reader j of process r is process r's micro-batch t for t*N + r = j (mod R): one reader per worker
    assert sorted(epoch) == list(range(6))


def test_shard_order_with_shards_that_do_not_divide_is_the_documented_weaker_guarantee():
    """5 shards of unequal size over 4 readers: at most once an epoch, < R left out, <= R - 1 shared."""
    sizes, batch, readers = [5, 4, 6, 3, 5], 2, 4  # n = 23, m = 5: 3 left out each epoch
    sampler, shards = shard_stream(sizes, batch, 0, 1, readers)
    left_out = []
    for epoch in range(3):
        order = sampler.epoch_order(epoch).tolist()
        assert sorted(order) == list(range(23))
        runs = [order[j * 5 : (j + 1) * 5] for j in range(readers)]
        left_out.append(set(order[20:]))
        owners = [{shard_of(i, shards) for i in run} for run in runs]
        shared = [s for s in range(5) if sum(s in mine for mine in owners) > 1]
        assert len(shared) <= readers - 1
        assert all(sum(s in mine for mine in owners) == 2 for s in shared)
    assert len({frozenset(out) for out in left_out}) > 1  # a different set each epoch
    # the stream reads those runs: micro-batch t is reader t mod 4's next B samples; a reader's run of 5
    # ends inside its third batch, which goes on with its run of the next epoch
    stream = [i for i, _ in take(sampler, 12 * batch)]
    first, second = sampler.epoch_order(0).tolist(), sampler.epoch_order(1).tolist()
    for t in range(12):
        reader, k = t % readers, t // readers
        run, later = first[reader * 5 : reader * 5 + 5], second[reader * 5 : reader * 5 + 5]
        assert stream[t * batch : (t + 1) * batch] == (run + later)[k * batch : (k + 1) * batch]


def test_shard_order_resumes_exactly_but_depends_on_the_readers():
    full, _ = shard_stream([3, 4, 5], batch=2, rank=1, processes=2, workers=2)
    resumed, _ = shard_stream([3, 4, 5], batch=2, rank=1, processes=2, workers=2, start_position=28)
    assert take(resumed, 16) == take(full, 30)[14:]
    one_worker, _ = shard_stream([3, 4, 5], batch=2, rank=1, processes=2, workers=1)
    assert take(one_worker, 30) != take(full, 30)  # weaker than the global order: R is part of the stream


def test_shard_order_needs_a_sample_per_reader():
    with pytest.raises(ConfigError, match="3 training samples cannot be spread over 4 readers"):
        shard_stream([3], batch=1, rank=0, processes=2, workers=2)


class _WhoReads(Dataset):
    """Item (index, position) -> (index, id of the DataLoader worker that read it)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int]:
        return key[0], get_worker_info().id


def test_shard_order_dataloader_workers_read_disjoint_shards():
    shards = [range(4 * s, 4 * s + 4) for s in range(6)]
    loader = stream_loader(_WhoReads(), range(24), 2, 0, 1, 0, 0, num_workers=2, shards=shards)
    by_worker: dict[int, set[int]] = {}
    for indices, workers in itertools.islice(iter(loader), 12):  # one epoch: 24 samples
        for index, worker in zip(indices.tolist(), workers.tolist(), strict=True):
            by_worker.setdefault(worker, set()).add(index // 4)
    assert sorted(by_worker) == [0, 1] and all(len(mine) == 3 for mine in by_worker.values())
    assert len(set().union(*by_worker.values())) == 6
