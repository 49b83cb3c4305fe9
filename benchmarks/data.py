"""Data at scale: start-up cost against folder size, input-pipeline images/s per source, and the
`webdataset` package's reader against ours on the same shards. Prints JSON.

1. `startup`: folders of N generated JPEGs (tiny: 32 px, 100 class folders). For each N: building the
   index (cold cache) and the held-out split's first hashing (both once per folder), then a warm start
   (open the cached index, the cached split, the sampler, the first batch), and `ldm-vae train-ae` to the
   end of step 1 with index and split cached (fastest of three). The full decode pass that start-up used to be
   (`check-data`) is timed for comparison.
2. `throughput`: 1024 photo-like 320x256 JPEGs read at 256 px, as a folder, as `wds:` shards (`pack`, 8
   shards) and as an `hf:` save_to_disk dataset (8 Arrow files), through the training stream
   (RandomFlipView, batch 32) in global order and, for the sharded sources, in shard order, with 1 and 2
   DataLoader workers (best of two passes each).
3. `webdataset`: the same shards read by the `webdataset` package (`WebDataset`, split by worker, our
   decode and transform, so only the reading differs) against our indexed reader in shard order and in
   global order, 1 and 2 workers; and raw reads without decoding, page cache dropped first
   (posix_fadvise), webdataset's sequential tar iteration against our positional reads in order and in
   random order.

    python benchmarks/data.py startup --sizes 1000 10000 100000
    python benchmarks/data.py throughput
    python benchmarks/data.py webdataset
Results are merged into benchmarks/results-data.json (one key per part and size).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.data import (  # noqa: E402
    ImageFolderDataset,
    RandomFlipView,
    StreamSampler,
    WebDatasetShards,
    image_transform,
    load_rgb,
    train_held_out_split,
)
from ldm_vae.data import index as folder_index_module  # noqa: E402
from ldm_vae.data.check import find_unreadable  # noqa: E402
from ldm_vae.data.hf import HuggingFaceImages  # noqa: E402
from ldm_vae.data.pack import pack_folder  # noqa: E402
from ldm_vae.data.sampler import ShardStreamSampler, shard_members  # noqa: E402

RESULTS = REPO / "benchmarks" / "results-data.json"
BATCH = 32
HELD_OUT = 64  # what train_ae_to_first_step asks for, so its split is the cached one


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth colour fields plus grain: JPEGs of a realistic size (tens of KB at 320x256), unlike noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    grain = rng.normal(0, 10, (height, width, 3))
    return np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)


def make_folder(root: Path, count: int, classes: int, encoded: list[bytes]) -> Path:
    """`count` files cycling through `encoded`, spread over `classes` class folders; reused if complete."""
    marker = root / ".complete"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True)
    for i in range(count):
        (root / f"class{i % classes:03d}" / f"{i:07d}.jpg").write_bytes(encoded[i % len(encoded)])
    marker.write_text("")
    return root


def timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def first_batch_seconds(dataset, seed: int = 0) -> dict[str, float]:
    """Warm start of the training data path: split (computed once, then cached), sampler, first batch."""
    split_first_s, _ = timed(lambda: train_held_out_split(dataset, HELD_OUT, seed))
    split_s, (train, _) = timed(lambda: train_held_out_split(dataset, HELD_OUT, seed))
    view = RandomFlipView(dataset, seed)
    loader = DataLoader(
        view, batch_size=BATCH, sampler=StreamSampler(train, BATCH, 0, 1, seed), num_workers=0
    )
    batch_s, _ = timed(lambda: next(iter(loader)))
    return {"split_first_s": split_first_s, "split_s": split_s, "first_batch_s": batch_s}


def train_ae_to_first_step(folder: Path, run_dir: Path) -> float:
    """Wall seconds of `ldm-vae train-ae kl-tiny` with max_steps=1 until its step-1 line appears."""
    command = [
        *(sys.executable, "-m", "ldm_vae.train.autoencoder", "kl-tiny", f"data.source={folder}"),
        *(
            "data.resolution_px=32",
            "data.num_workers=0",
            f"data.held_out_samples={HELD_OUT}",
            "train.batch_size=8",
        ),
        *("train.max_steps=2", "train.log_every_steps=1", f"run_dir={run_dir}", "export.scaling_samples=8"),
        "export.report_samples=4",
    ]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = run_dir / "stats.jsonl"
    while not (stats.is_file() and stats.read_text().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"train-ae exited with {process.returncode} before step 1")
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    process.kill()
    process.wait()
    return seconds


def startup(sizes: list[int], work: Path) -> dict:
    rng = np.random.default_rng(0)
    encoded = [jpeg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(64)]
    results = {}
    for size in sizes:
        folder = make_folder(work / f"folder-{size}", size, 100, encoded)
        # A folder modified within _RACY_NS of the index build keeps listing hashes, checked at every open;
        # real folders are older than that, so let the just-written one age past it first.
        age_s = time.time() - max(os.stat(path).st_mtime for path in folder.iterdir())
        time.sleep(max(0.0, folder_index_module._RACY_NS / 1e9 - age_s))
        os.environ["LDM_VAE_CACHE"] = str(work / f"cache-{size}")
        shutil.rmtree(work / f"cache-{size}", ignore_errors=True)
        build_s, _ = timed(lambda folder=folder: ImageFolderDataset(folder, 32))
        open_s, dataset = timed(lambda folder=folder: ImageFolderDataset(folder, 32))
        row = {"files": size, "index_build_s": build_s, "index_open_s": open_s}
        row |= first_batch_seconds(dataset)
        row["warm_data_start_s"] = row["index_open_s"] + row["split_s"] + row["first_batch_s"]
        runs = []  # three starts: one is at the mercy of whatever else the machine is doing
        for _ in range(3):
            shutil.rmtree(work / "run", ignore_errors=True)
            runs.append(train_ae_to_first_step(folder, work / "run"))
        row["train_ae_first_step_s"], row["train_ae_first_step_runs_s"] = min(runs), runs
        row["full_decode_s"], _ = timed(lambda dataset=dataset: find_unreadable(dataset, num_workers=2))
        results[f"startup_{size}"] = row
        print(json.dumps(row), flush=True)
    return results


def drop_page_cache(paths) -> None:
    """Evict these files from the page cache, so the next reads come from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def images_per_second(make_loader, batches: int, passes: int = 2) -> float:
    """Best of `passes` over `batches` batches of a fresh loader each; the first batch (worker start-up)
    is not timed."""
    best = 0.0
    for _ in range(passes):
        iterator = iter(make_loader())
        next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        best = max(best, batches * BATCH / (time.perf_counter() - start))
    return best


def stream_loader_of(dataset, workers: int, order: str) -> DataLoader:
    """The training stream of one process over all of `dataset`, as train-ae builds it."""
    indices = range(len(dataset))
    if order == "global":
        sampler = StreamSampler(indices, BATCH, 0, 1, seed=0)
    else:
        sampler = ShardStreamSampler(shard_members(dataset.shard_ranges(), indices), BATCH, 0, 1, workers, 0)
    return DataLoader(RandomFlipView(dataset, 0), batch_size=BATCH, sampler=sampler, num_workers=workers)


def photo_sources(work: Path, images: int, shards: int) -> dict:
    """The same `images` JPEGs as a folder, as `wds:` shards and as an `hf:` dataset (built once)."""
    rng = np.random.default_rng(1)
    encoded = [jpeg(photo_like(rng, 320, 256)) for _ in range(images)]
    folder = make_folder(work / "photos", images, 8, encoded)
    os.environ["LDM_VAE_CACHE"] = str(work / "cache-photos")
    if not (work / "shards" / "pack.json").is_file():
        pack_folder(folder, work / "shards", shard_size=images // shards)
    if not (work / "hf" / "dataset_info.json").is_file():
        import datasets

        rows = {
            "image": [{"bytes": b, "path": None} for b in encoded],
            "label": [i % 8 for i in range(images)],
        }
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=8)})
        dataset = datasets.Dataset.from_dict(rows, features=features)
        dataset.save_to_disk(str(work / "hf"), num_shards=shards)
    return {
        "mean_jpeg_kb": sum(map(len, encoded)) / len(encoded) / 1e3,
        "folder": ImageFolderDataset(folder, 256),
        "wds": WebDatasetShards(str(work / "shards"), 256),
        "hf": HuggingFaceImages(str(work / "hf"), 256),
    }


def throughput(work: Path, images: int = 1024, batches: int = 24) -> dict:
    sources = photo_sources(work, images, shards=8)
    row: dict[str, float] = {"images": images, "mean_jpeg_kb": sources.pop("mean_jpeg_kb")}
    for name, dataset in sources.items():
        for order in ("global", "shards") if name != "folder" else ("global",):
            for workers in (1, 2):
                rate = images_per_second(
                    lambda d=dataset, w=workers, o=order: stream_loader_of(d, w, o), batches
                )
                row[f"{name}_{order}_workers{workers}_img_s"] = rate
                print(f"{name} {order} workers={workers}: {rate:.1f} img/s", flush=True)
    return {"throughput_256px": row}


class _WebDatasetDecode:
    """webdataset sample dict -> (image (3, 256, 256) in [-1, 1], label), decoded like our sources."""

    def __init__(self) -> None:
        self.transform = image_transform(256)

    def __call__(self, sample: dict) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(io.BytesIO(sample["jpg"]), 256)), int(sample["cls"])


def webdataset_loader(shards: list[str], workers: int) -> DataLoader:
    import webdataset

    pipeline = webdataset.WebDataset(shards, shardshuffle=False, empty_check=False).map(_WebDatasetDecode())
    return DataLoader(pipeline, batch_size=BATCH, num_workers=workers)


def raw_mb_per_second(shards: list[str], read_all) -> float:
    """MB/s of image bytes that `read_all()` returns as a list, page cache of the shards dropped first."""
    drop_page_cache(shards)
    start = time.perf_counter()
    total = sum(len(data) for data in read_all())
    return total / 1e6 / (time.perf_counter() - start)


def webdataset_against_ours(work: Path, images: int = 1024, batches: int = 24) -> dict:
    import webdataset

    sources = photo_sources(work, images, shards=8)
    ours: WebDatasetShards = sources["wds"]
    shards = [str(path) for path in ours.shards]
    shutil.rmtree(work / "cache-photos" / "wds", ignore_errors=True)
    row: dict[str, float] = {"images": images, "shards": len(shards)}
    row["ours_index_build_s"], ours = timed(lambda: WebDatasetShards(str(work / "shards"), 256))
    for workers in (1, 2):
        loaders = {
            "webdataset": lambda w=workers: webdataset_loader(shards, w),
            "ours_shards": lambda w=workers: stream_loader_of(ours, w, "shards"),
            "ours_global": lambda w=workers: stream_loader_of(ours, w, "global"),
        }
        for name, make_loader in loaders.items():
            row[f"{name}_workers{workers}_img_s"] = rate = images_per_second(make_loader, batches)
            print(f"{name} workers={workers}: {rate:.1f} img/s", flush=True)
    in_order = list(range(len(ours)))
    permutation = np.random.default_rng(0).permutation(len(ours)).tolist()
    raw = {
        "webdataset": lambda: [s["jpg"] for s in webdataset.WebDataset(shards, shardshuffle=False)],
        "ours_in_order": lambda: [ours.image_bytes(i) for i in in_order],
        "ours_random": lambda: [ours.image_bytes(i) for i in permutation],
    }
    for name, read_all in raw.items():
        row[f"raw_{name}_cold_mb_s"] = max(raw_mb_per_second(shards, read_all) for _ in range(2))
    print(json.dumps(row), flush=True)
    return {"webdataset_vs_direct_256px": row}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["startup", "throughput", "webdataset"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ldm-vae-bench-data"), help="generated data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {"startup": lambda: startup(args.sizes, args.work), "throughput": lambda: throughput(args.work)}
    results = parts.get(args.part, lambda: webdataset_against_ours(args.work))()
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged |= {key: {**value, "machine": machine()} for key, value in results.items()}
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
