"""The index of an image folder: each image's path, class, byte size, pixel size and caption.

Built once per folder without decoding a single image: one walk lists the files, then a process pool reads
each file's header (format and size, a few hundred bytes) and its caption. The index is cached (`cache.py`)
with the folder's fingerprint, so later starts, on any process, cost one `stat` per directory.

Fingerprint: the mtime of every directory. Adding, removing or renaming a file changes its directory's
mtime. A file rewritten in place does not, so such an edit goes unnoticed (delete the cache folder to force
a rebuild); if the edit broke the file, reading replaces it like any unreadable sample. Because mtimes are
only as fine as the filesystem's clock tick, a directory modified within `_RACY_NS` of the build also keeps
a hash of its listing, which is compared too (git's "racy" index entries, handled the same way).

Captions: `name.txt` beside `name.jpg` (the common fine-tuning convention), else a `file_name` row of a
`metadata.jsonl` in the image's folder or above (Hugging Face imagefolder), its first key of
`CAPTION_KEYS`. Labels: the first-level sub-folder, as in torchvision's ImageFolder; images directly in
the root form the class "." (which sorts first).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ldm_vae.data.cache import SourceIndex, StringColumn, cached_index, map_in_processes
from ldm_vae.data.decode import describe_failure

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # matched case-insensitively
ROOT_CLASS = "."  # class name of images lying directly in the root folder
CAPTION_KEYS = ("caption", "text", "prompt")  # metadata.jsonl keys read as the caption, first found wins
_METADATA = "metadata.jsonl"
_INDEX_VERSION = 2  # bump when the arrays or meta change meaning
_RACY_NS = 3 * 10**9  # directories modified this close to the build also keep a listing hash
_PROBE_CHUNK = 512  # files per task of the probing pool

# ---------------------------------------------------------------------------------------------------------
# helpers


def _walk(root: Path) -> tuple[list[str], dict[str, str], set[str], list[str]]:
    """(image files, {directory: hash of its listing}, .txt files, metadata.jsonl files) under root.

    Relative posix paths. Follows symlinks; skips hidden files and folders and symlink loops. Images sorted.
    """
    images, listings, texts, metadata = [], {}, set(), []
    visited: set[str] = set()
    for dir_path, dir_names, file_names in os.walk(root, followlinks=True):
        real = os.path.realpath(dir_path)
        if real in visited:  # a symlink loop, or two links to one folder
            dir_names[:] = []
            continue
        visited.add(real)
        rel_dir = Path(dir_path).relative_to(root).as_posix()
        listings[rel_dir] = _names_hash(dir_names + file_names)  # what this walk saw, hidden names included
        dir_names[:] = [name for name in dir_names if not name.startswith(".")]
        prefix = "" if rel_dir == "." else f"{rel_dir}/"
        for name in file_names:
            if name.startswith("."):
                continue
            lower = name.lower()
            if lower.endswith(IMAGE_SUFFIXES):
                images.append(prefix + name)
            elif lower.endswith(".txt"):
                texts.add(prefix + name)
            elif name == _METADATA:
                metadata.append(prefix + name)
    return sorted(images), listings, texts, sorted(metadata)


def _probe(root: str, rel: str, sidecar: str | None) -> tuple[int, int, int, str | None, str]:
    """(file bytes, width, height, problem or None, sidecar caption) of one image, from its header only."""
    path = os.path.join(root, rel)
    file_bytes = os.stat(path).st_size
    caption = ""
    if sidecar is not None:
        caption = Path(root, sidecar).read_text(errors="replace").strip()
    if file_bytes == 0:
        return 0, 0, 0, "empty file", caption
    try:
        with Image.open(path) as image:  # parses the header; pixels are decoded only by load()
            width, height = image.size
    except Exception as error:
        return file_bytes, 0, 0, describe_failure(error), caption
    return file_bytes, width, height, None, caption


def _probe_chunk(root: str, items: list[tuple[str, str | None]]) -> list[tuple]:
    return [_probe(root, rel, sidecar) for rel, sidecar in items]


def _metadata_captions(root: Path, metadata_files: list[str]) -> dict[str, str]:
    """{image path relative to root: caption} from every metadata.jsonl (deeper files win)."""
    captions: dict[str, str] = {}
    for rel in sorted(metadata_files, key=lambda r: r.count("/")):
        folder = Path(rel).parent.as_posix()
        prefix = "" if folder == "." else f"{folder}/"
        for line in (root / rel).read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            key = next((k for k in CAPTION_KEYS if isinstance(row.get(k), str)), None)
            if key is not None and "file_name" in row:
                captions[prefix + row["file_name"]] = row[key]
    return captions


def _names_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def _directory_state(root: Path, listings: dict[str, str], racy_since_ns: int) -> dict[str, list]:
    """{dir: [mtime_ns, listing hash or None]}: the hash of what the walk saw, kept for directories
    modified after `racy_since_ns` (stat'ed after the walk, so a change during the build counts as racy)."""
    state = {}
    for rel, listing in sorted(listings.items()):
        mtime_ns = os.stat(root / rel).st_mtime_ns
        state[rel] = [mtime_ns, listing if mtime_ns >= racy_since_ns else None]
    return state


def _is_current(root: Path, meta: dict) -> bool:
    """Whether a cached index still describes the folder: one stat per directory (plus racy listings)."""
    if meta.get("version") != _INDEX_VERSION:
        return False
    try:
        for rel, (mtime_ns, listing) in meta["directories"].items():
            if os.stat(root / rel).st_mtime_ns != mtime_ns:
                return False
            if listing is not None and _names_hash(os.listdir(root / rel)) != listing:
                return False
    except OSError:  # a directory was removed or became unreadable
        return False
    return True


def _class_name(rel: str) -> str:
    return rel.split("/", 1)[0] if "/" in rel else ROOT_CLASS


def _build(root: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of a folder's index (see the module docstring)."""
    started_ns = time.time_ns()
    images, listings, texts, metadata_files = _walk(root)
    sidecars = [rel.rsplit(".", 1)[0] + ".txt" for rel in images]
    items = [(rel, txt if txt in texts else None) for rel, txt in zip(images, sidecars, strict=True)]
    chunks = [items[i : i + _PROBE_CHUNK] for i in range(0, len(items), _PROBE_CHUNK)]
    probes = [row for chunk in map_in_processes(partial(_probe_chunk, str(root)), chunks) for row in chunk]
    from_metadata = _metadata_captions(root, metadata_files)
    kept = [(rel, probe) for rel, probe in zip(images, probes, strict=True) if probe[3] is None]
    skipped = [[rel, probe[3]] for rel, probe in zip(images, probes, strict=True) if probe[3] is not None]
    classes = sorted({_class_name(rel) for rel, _ in kept})
    label_of = {name: label for label, name in enumerate(classes)}
    arrays = {
        **StringColumn.from_strings(rel for rel, _ in kept).arrays("keys"),
        **StringColumn.from_strings(probe[4] or from_metadata.get(rel, "") for rel, probe in kept).arrays(
            "captions"
        ),
        "labels": np.array([label_of[_class_name(rel)] for rel, _ in kept], dtype=np.int32),
        "file_bytes": np.array([probe[0] for _, probe in kept], dtype=np.int64),
        "width": np.array([probe[1] for _, probe in kept], dtype=np.int32),
        "height": np.array([probe[2] for _, probe in kept], dtype=np.int32),
    }
    meta = {
        "version": _INDEX_VERSION,
        "root": str(root),
        "classes": classes,
        "skipped": skipped,
        "num_seen": len(images),
        "directories": _directory_state(root, listings, started_ns - _RACY_NS),
    }
    return arrays, meta


# ---------------------------------------------------------------------------------------------------------
# main function


def folder_index(root: Path) -> SourceIndex:
    """The cached index of the image folder `root` (an existing directory), built if missing or stale.

    Arrays: `keys` (relative posix paths) and `captions` (string columns), `labels`, `file_bytes`, `width`,
    `height`. Meta:
    `classes`, `skipped` ([relative path, reason] of files whose header does not parse), `num_seen`.
    """
    real = Path(os.path.realpath(root))
    return cached_index("folders", str(real), lambda meta: _is_current(real, meta), lambda: _build(real))
