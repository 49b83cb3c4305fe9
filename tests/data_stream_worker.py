"""Started by tests/test_data_sources.py under torchrun: what this process reads of a training stream.

Builds the stream the way `train-ae` does (`build_dataset`, the held-out split, `stream_shards`,
`stream_loader`) and writes, as JSON, every (index, position, DataLoader worker) it drew in `batches`
micro-batches. Usage: data_stream_worker.py SOURCE ORDER WORKERS BATCH BATCHES HELD_OUT OUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import PartialState
from torch.utils.data import Dataset, get_worker_info

from ldm_vae.data import build_dataset, stream_shards, train_held_out_split
from ldm_vae.data.sampler import stream_loader


class WhoReads(Dataset):
    """view[(index, position)] = (index, position, worker id), after reading the sample for real."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, int, int]:
        index, position = key
        image, _ = self.dataset[index]  # (3, 16, 16)
        assert image.shape == (3, 16, 16), image.shape
        return index, position, get_worker_info().id if get_worker_info() else -1


source, order, workers, batch, batches, held_out, out = sys.argv[1:]
state = PartialState(cpu=True)
dataset = build_dataset(source, 16, 2, 0)
train, _ = train_held_out_split(dataset, int(held_out), seed=0)
shards = stream_shards(dataset, order, source)
loader = stream_loader(
    WhoReads(dataset), train, int(batch), state.process_index, state.num_processes, 0, 0, int(workers), shards
)
drawn = []
for _, (indices, positions, worker_ids) in zip(range(int(batches)), loader, strict=False):
    drawn += list(zip(indices.tolist(), positions.tolist(), worker_ids.tolist(), strict=True))
report = {
    "rank": state.process_index,
    "world": state.num_processes,
    "train": train,
    "shards": [[r.start, r.stop] for r in dataset.shard_ranges()],
    "drawn": drawn,
}
Path(out, f"rank{state.process_index}.json").write_text(json.dumps(report))
ranks_sum = torch.tensor([1.0])
dist.all_reduce(ranks_sum)  # the two processes found each other
dist.barrier()
state.destroy_process_group()
