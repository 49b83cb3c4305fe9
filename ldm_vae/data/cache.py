"""On-disk indexes of large sources: built once by one process, memory-mapped by every process and worker.

A source of a million files cannot be listed and probed by every process at every start. Its index (paths,
labels, sizes, captions, as flat numpy arrays) is built once, saved in the cache folder next to the
fingerprint of what it describes, and opened with `np.load(mmap_mode="r")`: opening it costs the same for
a thousand samples as for a million, and its pages are shared by every process on the machine, where
Python lists of a million strings would be copied into every DataLoader worker. A file lock makes one
process build while the others wait, then open what it wrote.

The cache folder is $LDM_VAE_CACHE, else ~/.cache/ldm-vae. Deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
from filelock import FileLock

CACHE_ENV = "LDM_VAE_CACHE"
_Item, _Result = TypeVar("_Item"), TypeVar("_Result")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ldm-vae").expanduser()


def map_in_processes(function: Callable[[_Item], _Result], items: list[_Item]) -> list[_Result]:
    """[function(item) for item in items], over a process pool when there is more than one item: indexing
    parses file headers in Python, under the GIL, so threads would not help. `function` must pickle."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ProcessPoolExecutor(max_workers=min(os.cpu_count() or 1, len(items))) as pool:
        return list(pool.map(function, items))


class StringColumn:
    """Many strings as one utf-8 blob and an offsets array: memory-mappable, no Python object per string."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = blob  # (total bytes,) uint8
        self.offsets = offsets  # (n + 1,) int64; string i is blob[offsets[i] : offsets[i + 1]]

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> StringColumn:
        encoded = [s.encode() for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        return {f"{name}.blob": self.blob, f"{name}.offsets": self.offsets}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


class SourceIndex:
    """A cached index: `meta` (the JSON written with it) and named arrays, memory-mapped on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta: dict = json.loads((folder / "meta.json").read_text())
        self.fingerprint: str = self.meta["fingerprint"]  # of the arrays: what is indexed, not when
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def strings(self, name: str) -> StringColumn:
        return StringColumn(self.array(f"{name}.blob"), self.array(f"{name}.offsets"))

    def __getstate__(self) -> dict:
        # A spawned DataLoader worker maps the files again rather than receiving a pickled copy of them.
        return {**self.__dict__, "_arrays": {}}


def cached_index(
    kind: str,
    identity: str,
    is_current: Callable[[dict], bool],
    build: Callable[[], tuple[dict[str, np.ndarray], dict]],
) -> SourceIndex:
    """The index of `identity` (e.g. a folder's real path) from the cache, built first if missing or stale.

    `is_current(meta)` says whether a cached index still describes the source; `build()` returns
    (arrays, meta). Under the lock, so concurrent callers build once and all return the same index.
    The meta gains `fingerprint`, a hash of the arrays: equal for equal content however often it is rebuilt.
    """
    folder = cache_root() / kind / hashlib.sha256(identity.encode()).hexdigest()[:24]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / "meta.json").is_file():
            index = SourceIndex(folder)
            if is_current(index.meta):
                return index
        arrays, meta = build()
        digest = hashlib.sha256()
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}:{array.dtype}:{array.shape}".encode() + array.tobytes())
        meta["fingerprint"] = digest.hexdigest()[:16]
        temp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        for name, array in arrays.items():
            np.save(temp / f"{name}.npy", array)
        (temp / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)  # a stale index; processes that mapped it keep their pages
        os.replace(temp, folder)
    return SourceIndex(folder)
