"""The training stream: per-process slices of one global order, resumable at any block boundary."""

from __future__ import annotations

import itertools

import pytest

from ldm_vae.data.sampler import StreamSampler


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
