"""An image folder to WebDataset shards, for users moving from folders to `wds:` sources.

Each indexed image is copied into a tar shard as it is (no re-encoding), with its class as `cls` (an
integer), its class name and relative path in `json`, and its caption, if any, as `txt`. Samples are
shuffled across shards with a seed (streaming readers only shuffle within a buffer, so class-sorted shards
would give them one-class batches). Shards are written whole and atomically, with fixed tar metadata, so a
rerun skips the shards that exist and the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from webdataset.writer import TarWriter

from ldm_vae.data.folder import ImageFolderDataset
from ldm_vae.errors import ConfigError
from ldm_vae.seeds import numpy_generator

PACK_FILE = "pack.json"  # what was packed, written first: a rerun must pack the same


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.tar"


def pack_folder(
    folder: str | Path, out: str | Path, shard_size: int, seed: int = 0, shuffle: bool = True
) -> dict:
    """Pack `folder` into `out`/shard-NNNNN.tar; returns the plan written to `out`/pack.json."""
    dataset = ImageFolderDataset(folder, resolution_px=8)  # only the index is used: nothing is decoded
    out = Path(out)
    order = (
        numpy_generator(seed, "pack_order").permutation(len(dataset)) if shuffle else np.arange(len(dataset))
    )
    plan = {
        "source": str(Path(folder).expanduser().resolve()),
        "fingerprint": dataset.fingerprint,
        "shard_size": shard_size,
        "seed": seed,
        "shuffle": shuffle,
        "num_samples": len(dataset),
        "num_shards": math.ceil(len(dataset) / shard_size),
        "classes": dataset.classes,
        "skipped": [list(item) for item in dataset.skipped],
    }
    out.mkdir(parents=True, exist_ok=True)
    if (out / PACK_FILE).is_file():
        previous = json.loads((out / PACK_FILE).read_text())
        if previous != plan:
            changed = next(key for key in plan if previous.get(key) != plan[key])
            raise ConfigError(f"OUT={str(out)!r}: was packed with another {changed}; use a new folder")
    elif any(out.iterdir()):
        raise ConfigError(f"OUT={str(out)!r}: not empty and not a partial output of `ldm-vae pack`")
    (out / PACK_FILE).write_text(json.dumps(plan, indent=2))

    for shard in range(plan["num_shards"]):
        path = out / shard_file(shard)
        if path.is_file():  # written whole by an earlier run (renamed into place only when complete)
            continue
        temp = out / f".tmp-{path.name}"
        with TarWriter(str(temp), encoder=False, mtime=0) as writer:  # fixed metadata: identical bytes
            for position in order[shard * shard_size : (shard + 1) * shard_size]:
                i = int(position)
                key = dataset.sample_key(i)
                sample = {
                    "__key__": f"{i:09d}",
                    key.rsplit(".", 1)[-1].lower(): (dataset.root / key).read_bytes(),
                    "cls": str(dataset.label(i)).encode(),
                    "json": json.dumps(
                        {"class_name": dataset.classes[dataset.label(i)], "path": key}
                    ).encode(),
                }
                if dataset.caption(i):
                    sample["txt"] = dataset.caption(i).encode()
                writer.write(sample)
        os.replace(temp, path)
    return plan
