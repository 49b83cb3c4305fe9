"""The full decode pass of `ldm-vae check-data`: which samples of a source do not decode, and why.

Training never decodes a source up front (unreadable samples are replaced when met, see `indexed.py`);
this pass is for a user who wants to know before a run, or to clean a folder.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import DataLoader, Dataset

from ldm_vae.data.indexed import IndexedImageDataset


class _Problems(Dataset):
    """Item i = (i, why sample i does not decode, or None)."""

    def __init__(self, dataset: IndexedImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, str | None]:
        return i, self.dataset.problem(i)


def find_unreadable(
    dataset: IndexedImageDataset, num_workers: int, progress: Callable[[int], object] | None = None
) -> list[tuple[str, str]]:
    """(name, reason) of every sample that does not decode, in index order; decodes in `num_workers`
    DataLoader workers; `progress(n)` is called after each batch of n samples."""
    loader = DataLoader(_Problems(dataset), batch_size=64, num_workers=num_workers, collate_fn=list)
    found = []
    for batch in loader:
        found += [(dataset.sample_name(i), why) for i, why in batch if why is not None]
        if progress is not None:
            progress(len(batch))
    return found
