"""Data at scale: start-up cost against folder size, and input-pipeline images/s per source. Prints JSON.

1. `startup`: folders of N generated JPEGs (tiny: 32 px, 100 class folders). For each N: building the
   index (cold cache), then a warm start (open the cached index, the train/held-out split, the sampler,
   the first batch), and `ldm-vae train-ae` to the end of step 1 with the index cached. The full decode
   pass that start-up used to be (`check-data`) is timed on the smaller folders for comparison.
2. `throughput`: 512 photo-like 320x256 JPEGs read at 256 px, as a folder, as `wds:` shards (`pack`) and
   as an `hf:` save_to_disk dataset, through the training stream (StreamSampler + RandomFlipView,
   batch 32) with 1 and 2 DataLoader workers. For `wds:` also: the stream's random order against reading
   the shards in order, with the page cache dropped for the shards first (posix_fadvise), both decoded
   and as raw reads.

    python benchmarks/data.py startup --sizes 1000 10000
    python benchmarks/data.py throughput
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
from torch.utils.data import DataLoader, Sampler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.data import (  # noqa: E402
    ImageFolderDataset,
    RandomFlipView,
    StreamSampler,
    WebDatasetShards,
    train_held_out_split,
)
from ldm_vae.data.check import find_unreadable  # noqa: E402
from ldm_vae.data.hf import HuggingFaceImages  # noqa: E402
from ldm_vae.data.pack import pack_folder  # noqa: E402

RESULTS = REPO / "benchmarks" / "results-data.json"
BATCH = 32


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
    """Warm start of the training data path: split (computed, then cached), sampler, first batch."""
    split_first_s, _ = timed(lambda: train_held_out_split(dataset, 256, seed))
    split_s, (train, _) = timed(lambda: train_held_out_split(dataset, 256, seed))
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
        *("data.resolution_px=32", "data.num_workers=0", "data.held_out_samples=64", "train.batch_size=8"),
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
        generate_s, folder = timed(lambda size=size: make_folder(work / f"folder-{size}", size, 100, encoded))
        os.environ["LDM_VAE_CACHE"] = str(work / f"cache-{size}")
        shutil.rmtree(work / f"cache-{size}", ignore_errors=True)
        build_s, _ = timed(lambda folder=folder: ImageFolderDataset(folder, 32))
        open_s, dataset = timed(lambda folder=folder: ImageFolderDataset(folder, 32))
        row = {"files": size, "generate_s": generate_s, "index_build_s": build_s, "index_open_s": open_s}
        row |= first_batch_seconds(dataset)
        row["warm_data_start_s"] = row["index_open_s"] + row["split_s"] + row["first_batch_s"]
        shutil.rmtree(work / "run", ignore_errors=True)
        row["train_ae_first_step_s"] = train_ae_to_first_step(folder, work / "run")
        if size <= 10_000:
            row["full_decode_s"], _ = timed(lambda dataset=dataset: find_unreadable(dataset, num_workers=2))
        results[f"startup_{size}"] = row
        print(json.dumps(row), flush=True)
    return results


class InOrder(Sampler):
    """(index, position) keys in index order: the sequential read the random stream is compared with."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter((i, i) for i in range(self.n))

    def __len__(self) -> int:
        return self.n


def images_per_second(dataset, workers: int, sampler: Sampler, batches: int, drop_cache=()) -> float:
    for path in drop_cache:  # evict these files from the page cache: reads come from the disk
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    loader = DataLoader(RandomFlipView(dataset, 0), batch_size=BATCH, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def raw_read_mb_per_second(dataset: WebDatasetShards, order: list[int]) -> float:
    """Image bytes read by `image_bytes` in `order`, page cache dropped first, no decoding."""
    for path in dataset.shards:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    start = time.perf_counter()
    total = sum(len(dataset.image_bytes(i)) for i in order)
    return total / 1e6 / (time.perf_counter() - start)


def throughput(work: Path, images: int = 512, batches: int = 10) -> dict:
    rng = np.random.default_rng(1)
    encoded = [jpeg(photo_like(rng, 320, 256)) for _ in range(images)]
    folder = make_folder(work / "photos", images, 8, encoded)
    os.environ["LDM_VAE_CACHE"] = str(work / "cache-photos")
    if not (work / "shards" / "pack.json").is_file():
        pack_folder(folder, work / "shards", shard_size=128)
    if not (work / "hf" / "dataset_info.json").is_file():
        import datasets

        rows = {
            "image": [{"bytes": b, "path": None} for b in encoded],
            "label": [i % 8 for i in range(images)],
        }
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=8)})
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(work / "hf"))
    sources = {
        "folder": ImageFolderDataset(folder, 256),
        "wds": WebDatasetShards(str(work / "shards"), 256),
        "hf": HuggingFaceImages(str(work / "hf"), 256),
    }
    row: dict[str, float] = {"images": images, "mean_jpeg_kb": sum(map(len, encoded)) / len(encoded) / 1e3}
    for name, dataset in sources.items():
        for workers in (1, 2):
            sampler = StreamSampler(range(len(dataset)), BATCH, 0, 1, seed=0)
            row[f"{name}_workers{workers}_img_s"] = images_per_second(dataset, workers, sampler, batches)
    shards = sources["wds"]
    cold = [str(path) for path in shards.shards]
    for order, sampler in (
        ("stream", StreamSampler(range(len(shards)), BATCH, 0, 1, 0)),
        ("in_order", InOrder(len(shards))),
    ):
        row[f"wds_{order}_cold_workers1_img_s"] = images_per_second(shards, 1, sampler, batches, cold)
    permutation = np.random.default_rng(0).permutation(len(shards)).tolist()
    row["wds_raw_random_cold_mb_s"] = raw_read_mb_per_second(shards, permutation)
    row["wds_raw_in_order_cold_mb_s"] = raw_read_mb_per_second(shards, list(range(len(shards))))
    print(json.dumps(row), flush=True)
    return {"throughput_256px": row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["startup", "throughput"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ldm-vae-bench-data"), help="generated data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    results = startup(args.sizes, args.work) if args.part == "startup" else throughput(args.work)
    merged = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    merged |= results
    merged["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
