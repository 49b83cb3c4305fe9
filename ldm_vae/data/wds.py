"""`wds:PATTERN`: local WebDataset tar shards, read by random access through a cached index.

WebDataset is built for streaming: each worker reads whole shards in order, which gives no mid-epoch
resume and no "N processes equal one". Here the shards are indexed once instead (member names, data
offsets and sizes from the tar headers, in a process pool, no decoding; small `cls`/`json`/`txt` members
read along the way) and cached with each shard's size and mtime. A sample is then one `pread` at a known
offset, so a `wds:` source is an ordinary map-style dataset and inherits every guarantee of the
position-keyed stream (`sampler.py`): exact resume, 2 processes == 1, each sample once per epoch.
Reading by offset costs no more than reading in order where it matters (`benchmarks/data.py`).

Conventions are WebDataset's (its own `base_plus_ext` splits member names, its `expand_urls` expands
patterns): a sample is the members sharing a key (`dir/000123.jpg`, `dir/000123.cls`, `...txt`); the image
is the first of jpg/jpeg/png/webp/bmp; the class is `cls` (an integer, or a class name) or `json` ("label"
or "cls", with an optional "class_name"); the caption is `txt`. `data.image_column` / `label_column` /
`caption_column` name other extensions. Shards are given as a brace pattern (`data-{00000..00099}.tar`),
a folder of .tar files, or a text file listing one shard per line (relative to the list).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from ldm_vae.data.cache import SourceIndex, StringColumn, cached_index, map_in_processes
from ldm_vae.data.decode import load_rgb
from ldm_vae.data.indexed import IndexedImageDataset, listed_skips
from ldm_vae.errors import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")  # the first one a sample has is its image
LABEL_EXTENSIONS = ("cls", "json")
CAPTION_EXTENSIONS = ("txt",)
_META_MEMBER = re.compile(r"__[^/]*__($|/)")  # WebDataset's own metadata members, never samples
_INDEX_VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# helpers


def shard_paths(pattern: str) -> list[Path]:
    """The shards a `wds:` pattern names, in order; a missing shard or an empty pattern is a ConfigError."""
    where = f"data.source='wds:{pattern}'"
    if not pattern.strip():
        raise ConfigError(f"{where}: empty pattern; give shards as data-{{00000..00099}}.tar or a folder")
    if "://" in pattern or pattern.startswith("pipe:"):
        raise ConfigError(f"{where}: only local shards are read; copy or mount them first")
    path = Path(pattern).expanduser()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        if not shards:
            raise ConfigError(f"{where}: the folder holds no .tar files")
    elif path.is_file() and path.suffix != ".tar":
        lines = [line.strip() for line in path.read_text().splitlines()]
        shards = [path.parent / Path(line).expanduser() for line in lines if line and line[0] != "#"]
        if not shards:
            raise ConfigError(f"{where}: the list file names no shards")
    else:
        shards = [Path(name).expanduser() for name in expand_urls(pattern)]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"{where}: shard {missing[0]} does not exist{more}")
    return shards


def _read_label(
    tar: tarfile.TarFile, by_ext: dict, label_ext: str | None
) -> tuple[int | str | None, str | None]:
    """(label, class name) of a sample: the label an integer or a name, from `cls` (plain text) or from a
    `json` member's "label"/"cls"; the class name from a `json` member's "class_name"/"class" if any."""
    label, row = None, {}
    if label_ext is not None and not label_ext.endswith("json"):
        text = tar.extractfile(by_ext[label_ext]).read().decode(errors="replace").strip()
        label = int(text) if re.fullmatch(r"-?\d+", text) else text or None
    json_ext = label_ext if label_ext is not None and label_ext.endswith("json") else "json"
    if json_ext in by_ext and label_ext is not None:  # small metadata next to a class; never read otherwise
        row = json.loads(tar.extractfile(by_ext[json_ext]).read())
        row = row if isinstance(row, dict) else {}
    if label is None:
        label = row.get("label", row.get("cls"))
    name = row.get("class_name", row.get("class"))
    return label, (name if isinstance(name, str) else None)


def _index_shard(columns: tuple[str | None, str | None, str | None], path: str) -> dict:
    """One shard's samples as (key, image offset, image size, label token, class name, caption) rows,
    how many keys it holds, the member extensions seen, and [name, reason] of what was left out."""
    image_column, label_column, caption_column = columns
    file_bytes = os.path.getsize(path)
    name = Path(path).name
    members: dict[str, dict[str, tarfile.TarInfo]] = {}  # key -> ext -> member, in tar order
    rows, problems, seen = [], [], 0
    try:
        with tarfile.open(path, "r:") as tar:
            try:
                for member in tar:
                    key, ext = base_plus_ext(member.name)
                    if not member.isreg() or key is None or _META_MEMBER.match(member.name):
                        continue
                    if member.offset_data + member.size > file_bytes:  # the shard ends inside this sample
                        problems.append([f"{name}:{member.name}", "truncated"])
                        members.pop(key, None)  # the whole sample goes, counted as seen
                        seen = 1
                        break
                    members.setdefault(key, {})[ext.lower()] = member
            except tarfile.ReadError as error:  # a damaged header mid-shard: keep what came before it
                problems.append([name, f"tar unreadable after {len(members)} samples ({error})"])
            for key, by_ext in members.items():
                image_ext = _first(by_ext, (image_column,) if image_column else IMAGE_EXTENSIONS)
                label_ext = _first(by_ext, (label_column,) if label_column else LABEL_EXTENSIONS)
                caption_ext = _first(by_ext, (caption_column,) if caption_column else CAPTION_EXTENSIONS)
                if image_ext is None:
                    wanted = image_column or "/".join(IMAGE_EXTENSIONS)
                    problems.append([f"{name}:{key}", f"no {wanted} member"])
                    continue
                try:
                    label, class_name = _read_label(tar, by_ext, label_ext)
                    caption = ""
                    if caption_ext is not None:
                        caption = tar.extractfile(by_ext[caption_ext]).read().decode(errors="replace").strip()
                except (ValueError, OSError) as error:  # bad json, short read
                    problems.append([f"{name}:{key}", f"unreadable {label_ext}/{caption_ext}: {error}"[:100]])
                    continue
                image = by_ext[image_ext]
                rows.append((key, image.offset_data, image.size, label, class_name, caption))
    except tarfile.ReadError as error:
        problems.append([name, f"not a readable tar file ({error})"])
    extensions = sorted({ext for by_ext in members.values() for ext in by_ext})
    return {"rows": rows, "seen": seen + len(members), "extensions": extensions, "problems": problems}


def _first(by_ext: dict, candidates: tuple[str, ...]) -> str | None:
    return next((ext for ext in candidates if ext in by_ext), None)


def _resolve_labels(tokens: list[int | str | None], names: list[str | None]) -> tuple[list[int], list[str]]:
    """(labels, classes) from per-sample label tokens: integers stay labels (named by any "class_name"
    seen), names become labels in sorted order; no tokens at all means one class "."."""
    if all(token is None for token in tokens):
        return [0] * len(tokens), ["."]
    if all(isinstance(token, int) for token in tokens):
        named = {token: name for token, name in zip(tokens, names, strict=True) if name is not None}
        return list(tokens), [named.get(label, str(label)) for label in range(max(tokens) + 1)]
    classes = sorted({str(token) for token in tokens})
    position = {name: label for label, name in enumerate(classes)}
    return [position[str(token)] for token in tokens], classes


def _build(shards: list[Path], columns: tuple[str | None, str | None, str | None]) -> tuple[dict, dict]:
    """The arrays and meta of the shards' index (see `WebDatasetShards`)."""
    results = map_in_processes(partial(_index_shard, columns), [str(shard) for shard in shards])
    extensions = sorted({ext for result in results for ext in result["extensions"]})
    for column, value in zip(("image_column", "label_column", "caption_column"), columns, strict=True):
        if value is not None and value not in extensions:
            raise ConfigError(
                f"data.{column}='{value}': no sample in the shards has a .{value} member "
                f"(extensions seen: {', '.join(extensions) or 'none'})"
            )
    problems = [problem for result in results for problem in result["problems"]]
    # (shard, key, offset, size, label token, class name, caption)
    rows = [(s, *row) for s, result in enumerate(results) for row in result["rows"]]
    labelled = [row for row in rows if row[4] is not None]
    if labelled and len(labelled) < len(rows):  # some samples have a class and these do not: leave them out
        problems += [[f"{shards[row[0]].name}:{row[1]}", "no class label"] for row in rows if row[4] is None]
        rows = labelled
    labels, classes = _resolve_labels([row[4] for row in rows], [row[5] for row in rows])
    arrays = {
        **StringColumn.from_strings(f"{shards[row[0]].name}:{row[1]}" for row in rows).arrays("keys"),
        **StringColumn.from_strings(row[6] for row in rows).arrays("captions"),
        "shard": np.array([row[0] for row in rows], dtype=np.int32),
        "offset": np.array([row[2] for row in rows], dtype=np.int64),
        "size": np.array([row[3] for row in rows], dtype=np.int64),
        "labels": np.array(labels, dtype=np.int32),
    }
    meta = {
        "version": _INDEX_VERSION,
        "shards": _shard_stats(shards),
        "classes": classes,
        "skipped": problems,
        "num_seen": sum(result["seen"] for result in results),
    }
    return arrays, meta


def _shard_stats(shards: list[Path]) -> list[list]:
    """[path, bytes, mtime_ns] of each shard: an index is current while these are unchanged."""
    return [[str(shard), (stat := shard.stat()).st_size, stat.st_mtime_ns] for shard in shards]


# ---------------------------------------------------------------------------------------------------------
# main class


class WebDatasetShards(IndexedImageDataset):
    """`wds:` shards as a map-style dataset: `dataset[i]` = (image (3, R, R) in [-1, 1], label).

    Samples are numbered shard by shard in tar order; `shard_ranges()` gives each shard's range of indices,
    so a job can hand whole input shards to each process.
    """

    def __init__(
        self,
        pattern: str,
        resolution_px: int,
        image_column: str | None = None,
        label_column: str | None = None,
        caption_column: str | None = None,
    ) -> None:
        super().__init__(resolution_px)
        self.source = f"wds:{pattern}"
        self.shards = shard_paths(pattern)
        columns = (image_column, label_column, caption_column)
        identity = json.dumps([[str(s.resolve()) for s in self.shards], columns])
        stats = _shard_stats(self.shards)
        self.index: SourceIndex = cached_index(
            "wds",
            identity,
            lambda meta: meta.get("version") == _INDEX_VERSION and meta["shards"] == stats,
            lambda: _build(self.shards, columns),
        )
        self.adopt(self.index)
        if len(self) == 0:
            raise ConfigError(
                f"data.source='{self.source}': no samples with an image in {len(self.shards)} shard(s)"
                + (f": {listed_skips(self.skipped)}" if self.skipped else "")
            )

    def _attach(self) -> None:
        super()._attach()
        self._shard = self.index.array("shard")  # (n,) int32, ascending
        self._offset = self.index.array("offset")  # (n,) int64, byte offset of the image member's data
        self._size = self.index.array("size")  # (n,) int64

    def shard_ranges(self) -> list[range]:
        """The indices of each shard's samples, in shard order (empty for a shard left with none)."""
        bounds = np.searchsorted(self._shard, np.arange(len(self.shards) + 1))
        return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def image_bytes(self, i: int) -> bytes:
        """The encoded image of sample i: one positional read (safe in forked workers: no shared offset)."""
        fd = os.open(self.shards[self._shard[i]], os.O_RDONLY)
        try:
            data = os.pread(fd, int(self._size[i]), int(self._offset[i]))
        finally:
            os.close(fd)
        if len(data) < self._size[i]:
            raise OSError(f"image truncated: {len(data)} of {self._size[i]} bytes")
        return data

    def open_image(self, i: int) -> Image.Image:
        return load_rgb(io.BytesIO(self.image_bytes(i)), self.resolution_px)
