"""`hf:NAME_OR_PATH[:split]`: a Hugging Face `datasets` dataset, read by row (Arrow tables are random-access).

Accepted: a `save_to_disk` folder (memory-mapped as it is); a local parquet or arrow file, or a folder of
data files, which `datasets.load_dataset` converts once into its own cache (its file lock makes one
process convert while the others wait); or the name of a hub dataset already in the local Hugging Face
cache (set HF_HUB_OFFLINE=1 to be sure nothing is downloaded). The split defaults to "train".

Columns: `data.image_column` (default: the first `Image` feature; a binary column when named),
`data.label_column` (default: the first `ClassLabel`, whose names become the class names; an integer or a
string column when named; none: every row is class "."), `data.caption_column` (default: the first string
column named one of `CAPTION_COLUMNS`). Images are read undecoded (`Image(decode=False)`) and decoded here
like files, so an undecodable row is replaced and named (`row N`) like a broken file.

Shards: the Arrow files behind the dataset (`save_to_disk(num_shards=...)`, or the cache files
`load_dataset` wrote), in row order; `encode` hands whole files to each process and `data.order=shards`
whole runs of them to each reader. A dataset whose rows go through an indices mapping is one shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ldm_vae.data.decode import load_rgb
from ldm_vae.data.indexed import IndexedImageDataset
from ldm_vae.errors import ConfigError

CAPTION_COLUMNS = ("caption", "text", "prompt", "txt")  # auto-detected caption columns, first found wins
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}

# ---------------------------------------------------------------------------------------------------------
# helpers


def load_hf(spec: str) -> datasets.Dataset:
    """The split of the dataset `NAME_OR_PATH[:split]` names; a user mistake is a one-line ConfigError."""
    where = f"data.source='hf:{spec}'"
    name, _, split = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path = Path(name).expanduser()
    try:
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix in _BUILDERS:
            loaded = datasets.load_dataset(_BUILDERS[path.suffix], data_files=str(path))
        elif path.exists():
            loaded = datasets.load_dataset(str(path))  # a folder of data files; splits from their names
        elif name.startswith(("/", ".", "~")):
            raise ConfigError(f"{where}: {path} does not exist")
        else:
            loaded = datasets.load_dataset(name)  # a hub dataset: the local cache when offline
    except ConfigError:
        raise
    except Exception as error:  # DatasetNotFoundError, FileNotFoundError, ValueError, ConnectionError, ...
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{where}: cannot load it ({first_line[:200]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise ConfigError(f"{where}: no split '{split}'; splits: {', '.join(loaded)}")
        return loaded[split]
    if split:
        raise ConfigError(f"{where}: the dataset has no splits; drop ':{split}'")
    return loaded


def _column(ds: datasets.Dataset, column: str | None, kinds: tuple[type, ...], setting: str) -> str | None:
    """The named column, checked to exist and be of one of `kinds`, or None when not named."""
    if column is None:
        return None
    if column not in ds.features:
        raise ConfigError(f"data.{setting}='{column}': no such column; columns: {', '.join(ds.features)}")
    feature = ds.features[column]
    if not isinstance(feature, kinds):
        raise ConfigError(f"data.{setting}='{column}': is a {feature!r} column, which it cannot be")
    return column


def _is_string(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_image(feature: object) -> bool:
    """An Image feature, or a column of encoded bytes or of file paths."""
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary", "string", "large_string")
    return isinstance(feature, datasets.Image)


def _labels_and_classes(ds: datasets.Dataset, column: str | None) -> tuple[np.ndarray, list[str]]:
    """(labels (n,) int64, class names): ClassLabel names; integers as they are; strings in sorted order."""
    if column is None:
        return np.zeros(len(ds), dtype=np.int64), ["."]
    feature = ds.features[column]
    values = ds.with_format("arrow")[column]  # pyarrow ChunkedArray, no Python object per row
    if values.null_count:
        raise ConfigError(f"data.label_column='{column}': {values.null_count} rows have no label")
    if _is_string(feature):
        classes = sorted(pc.unique(values).to_pylist())
        return pc.index_in(values, value_set=pa.array(classes)).to_numpy().astype(np.int64), classes
    labels = values.to_numpy().astype(np.int64)
    if isinstance(feature, datasets.ClassLabel):
        return labels, list(feature.names)
    if labels.min() < 0:
        raise ConfigError(f"data.label_column='{column}': labels must be >= 0, found {labels.min()}")
    return labels, [str(label) for label in range(int(labels.max()) + 1)]


def _file_rows(ds: datasets.Dataset) -> list[int]:
    """Rows of each Arrow file behind `ds`, in order; [len(ds)] when its rows are not the files' rows."""
    counts = []
    for entry in ds.cache_files:
        with pa.memory_map(entry["filename"]) as source:  # only record batch headers are touched
            counts.append(sum(batch.num_rows for batch in pa.ipc.open_stream(source)))
    if ds._indices is not None or sum(counts) != len(ds):
        return [len(ds)]
    return counts


def _fingerprint(ds: datasets.Dataset, columns: list[str | None]) -> str:
    """Changes when the data files or the columns read change: the Arrow files' paths, sizes and mtimes."""
    files = [entry["filename"] for entry in ds.cache_files]
    stats = [[f, (s := os.stat(f)).st_size, s.st_mtime_ns] for f in files] if files else ds._fingerprint
    return hashlib.sha256(json.dumps([stats, len(ds), columns]).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# main class


class HuggingFaceImages(IndexedImageDataset):
    """An `hf:` source as (image (3, R, R) in [-1, 1], label); `sample_key(i)` is the row number."""

    def __init__(
        self,
        spec: str,
        resolution_px: int,
        image_column: str | None = None,
        label_column: str | None = None,
        caption_column: str | None = None,
    ) -> None:
        super().__init__(resolution_px)
        self.source = f"hf:{spec}"
        ds = load_hf(spec)
        image = _column(ds, image_column, (datasets.Image, datasets.Value), "image_column")
        if image is not None and not _is_image(ds.features[image]):
            raise ConfigError(f"data.image_column='{image}': holds neither images, bytes nor paths")
        image = image or next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        if image is None:
            raise ConfigError(
                f"data.source='{self.source}': no Image column; set data.image_column to one of "
                f"{', '.join(ds.features)}"
            )
        label = _column(ds, label_column, (datasets.ClassLabel, datasets.Value), "label_column")
        label = label or next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        caption = _column(ds, caption_column, (datasets.Value,), "caption_column")
        caption = caption or next((c for c in CAPTION_COLUMNS if _is_string(ds.features.get(c))), None)
        if caption is not None and not _is_string(ds.features[caption]):
            raise ConfigError(f"data.caption_column='{caption}': is not a string column")

        self.columns = {"image": image, "label": label, "caption": caption}
        rows = ds.select_columns([c for c in (image, caption) if c is not None])
        if isinstance(ds.features[image], datasets.Image):
            rows = rows.cast_column(image, datasets.Image(decode=False))  # {"bytes", "path"}: decoded here
        self._rows = rows
        self._labels, self.classes = _labels_and_classes(ds, label)
        self.skipped: list[tuple[str, str]] = []  # rows are only found unreadable when read
        self.num_seen = len(ds)
        self.fingerprint = _fingerprint(ds, [image, label, caption])
        self._file_rows = _file_rows(ds)

    def shard_ranges(self) -> list[range]:
        """The rows of each Arrow file, in order (see the module docstring)."""
        bounds = np.cumsum([0, *self._file_rows])
        return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def sample_key(self, i: int) -> str:
        return str(i)

    def sample_name(self, i: int) -> str:
        return f"row {i}"

    def caption(self, i: int) -> str:
        column = self.columns["caption"]
        return (self._rows[i][column] or "") if column is not None else ""

    def open_image(self, i: int) -> Image.Image:
        value = self._rows[i][self.columns["image"]]
        if isinstance(value, dict):  # an Image feature: encoded bytes, or a path for images stored by path
            value = value["bytes"] if value.get("bytes") is not None else value.get("path")
        if value is None:
            raise ValueError("the row has no image")
        return load_rgb(io.BytesIO(value) if isinstance(value, bytes) else value, self.resolution_px)
