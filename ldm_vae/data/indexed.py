"""What image folders, WebDataset shards and Hugging Face datasets share: indexed samples, decoded on read.

A source is indexed once without decoding anything (see `cache.py`), so a sample that does not decode is
only found when it is read. It is then replaced by the next readable sample in index order: a pure function
of the index and the files, so every run, every resume and every process replaces it the same way, and the
stream positions stay where they were. Each replacement is logged once per process and, when the job asks
for it (`record_skips_to`), appended to a JSON-lines file that DataLoader workers and processes share, so the
job can count and name the unreadable samples in its metrics or manifest (`read_skips`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ldm_vae.data.cache import SourceIndex, StringColumn
from ldm_vae.data.decode import describe_failure
from ldm_vae.data.transforms import image_transform
from ldm_vae.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_LISTED_SKIPS = 10  # names shown by skip_report(); the rest are counted


def listed_skips(skipped: list[tuple[str, str]]) -> str:
    """'name (reason), ...' for the first few, for one-line reports and errors."""
    listed = ", ".join(f"{name} ({reason})" for name, reason in skipped[:MAX_LISTED_SKIPS])
    return listed + (", ..." if len(skipped) > MAX_LISTED_SKIPS else "")


def read_skips(path: str | Path) -> list[tuple[str, str]]:
    """The unreadable samples recorded in a skip log: (name, reason), once each, sorted by name."""
    path = Path(path)
    if not path.is_file():
        return []
    found = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            found[entry["name"]] = entry["reason"]
    return sorted(found.items())


class IndexedImageDataset(Dataset):
    """Base of the file-backed datasets: `dataset[i]` = (image (3, R, R) float32 in [-1, 1], label int).

    A subclass sets `source` (for messages), `classes`, `skipped` ((name, reason) of what indexing left
    out), `num_seen` (samples indexing met, kept or not), `fingerprint` (changes when the data does) and the
    per-sample columns `_keys`, `_labels`, `_captions` (all of these at once by `adopt(index)`), and
    implements `open_image`.
    """

    source: str
    classes: list[str]
    skipped: list[tuple[str, str]]
    num_seen: int
    fingerprint: str
    _keys: Sequence[str]
    _labels: Sequence[int]
    _captions: Sequence[str]

    def __init__(self, resolution_px: int) -> None:
        self.resolution_px = resolution_px
        self.transform = image_transform(resolution_px)
        self._skip_log: Path | None = None
        self._reported: set[int] = set()  # indices this process has already reported as unreadable

    def adopt(self, index: SourceIndex) -> None:
        """Take the columns and the summary of a cached index (arrays `keys`, `labels`, `captions`)."""
        self.index = index
        self.classes: list[str] = index.meta["classes"]
        self.skipped = [(name, why) for name, why in index.meta["skipped"]]
        self.num_seen: int = index.meta["num_seen"]
        self.fingerprint = index.fingerprint
        self._attach()

    def _attach(self) -> None:
        """Map the per-sample columns of `self.index` (again in a process that unpickled this dataset)."""
        self._keys = self.index.strings("keys")
        self._captions = self.index.strings("captions")
        self._labels = self.index.array("labels")  # (n,) int32

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if "index" in state:  # memory-mapped columns: mapped again when unpickled, never copied
            state = {k: v for k, v in state.items() if not isinstance(v, np.ndarray | StringColumn)}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "index" in state:
            self._attach()

    def open_image(self, i: int) -> Image.Image:
        """Sample i fully decoded to upright RGB; raises whatever reading or decoding raises."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._labels)

    def sample_key(self, i: int) -> str:
        """A stable name of sample i, hashed by the train/held-out split."""
        return self._keys[i]

    def sample_name(self, i: int) -> str:
        """Where sample i lives, for a user to find it: a path, `shard.tar:key`, a row number."""
        return self._keys[i]

    def label(self, i: int) -> int:
        return int(self._labels[i])

    def caption(self, i: int) -> str:
        """The caption of sample i, "" when the source has none for it."""
        return self._captions[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample i, or the next readable one if it does not decode (see the module docstring)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of {len(self)} samples")
        for offset in range(len(self)):
            j = (i + offset) % len(self)
            try:
                image = self.open_image(j)
            except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
                self._report_unreadable(j, describe_failure(error))
                continue
            return self.transform(image), self.label(j)  # (3, R, R) in [-1, 1]
        raise ConfigError(f"data.source='{self.source}': none of its {len(self)} samples is readable")

    def problem(self, i: int) -> str | None:
        """None if sample i decodes, else why not (the full decode pass of `check-data`)."""
        try:
            self.open_image(i)
        except Exception as error:
            return describe_failure(error)
        return None

    def record_skips_to(self, path: str | Path) -> None:
        """Append every unreadable sample met from now on to the JSON-lines file `path` (see `read_skips`)."""
        self._skip_log = Path(path)

    def _report_unreadable(self, i: int, reason: str) -> None:
        if i in self._reported:
            return
        self._reported.add(i)
        name = self.sample_name(i)
        logger.warning("skipping unreadable sample %s (%s)", name, reason)
        if self._skip_log is not None:
            line = json.dumps({"name": name, "reason": reason}) + "\n"
            # One write of a short line to an O_APPEND file: lines from concurrent workers do not interleave.
            self._skip_log.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._skip_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def skip_report(self) -> str:
        """One line for the log: how many samples indexing left out and why (the first few by name)."""
        summary = f"skipped {len(self.skipped)} of {self.num_seen} samples of {self.source}"
        return f"{summary}: {listed_skips(self.skipped)}" if self.skipped else summary
