"""Codebook health of four tokenizers at equal steps: VQ-EMA (ours), VQ with the rotation trick, FSQ, LFQ.

Every run trains the same small VQ autoencoder (vq-tiny's 16 latent channels and quantizer defaults, made f2
at 16 px so that 16 runs fit a few CPU minutes) without the GAN, at ~1000 and ~16k codes:

    vq-ema       learned codebook: EMA, k-means init, dead-code restart, l2-normalised 8-d codes
    vq-rotation  the same, with the rotation trick instead of the straight-through copy
    fsq          FSQ levels [8, 5, 5, 5] (1000 codes) or [8, 8, 8, 6, 5] (15360)
    lfq          LFQ with 10 bits (1024 codes) or 14 bits (16384), MAGVIT-v2's entropy penalty

on the built-in shapes and on an image folder of random crops of matplotlib's sample photograph (a real
photograph shipped with matplotlib, so nothing is downloaded). Held-out figures: codebook usage and
perplexity (ldm_vae.metrics.codebook), PSNR, and sharpness (Laplacian energy of the reconstruction over
the original's; 1 = as sharp), all from the exported diffusers VQModel. Writes the JSON and prints a
markdown table.

    python benchmarks/codebook.py [--steps 600] [--out benchmarks/results-codebook.json]

The JSON is rewritten after every run, so an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import VQModel
from matplotlib import cbook
from PIL import Image
from torch.utils.data import DataLoader, Subset

from ldm_vae.config import AutoencoderTrainConfig, load_config
from ldm_vae.data import build_dataset, train_held_out_split
from ldm_vae.metrics import sharpness
from ldm_vae.train.autoencoder import train

REPO = Path(__file__).resolve().parent.parent

# Codebook size -> overrides of each quantizer kind.
SIZES = {
    "~1k": {
        "vq-ema": ["model.quantizer.num_codes=1024"],
        "vq-rotation": ["model.quantizer.num_codes=1024", "model.quantizer.gradient=rotation"],
        "fsq": ["model.quantizer.kind=fsq", "model.quantizer.levels=[8,5,5,5]"],
        "lfq": ["model.quantizer.kind=lfq", "model.quantizer.lfq_bits=10"],
    },
    "~16k": {
        "vq-ema": ["model.quantizer.num_codes=16384"],
        "vq-rotation": ["model.quantizer.num_codes=16384", "model.quantizer.gradient=rotation"],
        "fsq": ["model.quantizer.kind=fsq", "model.quantizer.levels=[8,8,8,6,5]"],
        "lfq": ["model.quantizer.kind=lfq", "model.quantizer.lfq_bits=14"],
    },
}

BATCH_SIZE = 8

# vq-tiny made f2 at 16 px (8x8 = 64 tokens per image), no GAN, short schedule, a quick export.
COMMON = [
    "data.resolution_px=16",
    "data.builtin_samples=4096",
    "model.block_out_channels=[32,64]",
    "loss.disc_weight=0",
    f"train.batch_size={BATCH_SIZE}",
    "train.peak_tflops=1",  # MFU is not reported here: skip measuring the device's matmul peak
    "optim.warmup_steps=20",
    "train.log_every_steps=25",
    "train.image_every_steps=100000",
    "export.scaling_samples=128",
    "export.report_samples=8",
]


def write_photo_crops(folder: Path, count: int, size_px: int, seed: int) -> None:
    """Random square crops (48 to 160 px, resized to size_px) of matplotlib's grace_hopper.jpg."""
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        photo = Image.open(file).convert("RGB")
    rng = random.Random(seed)
    for i in range(count):
        side = rng.randint(48, 160)
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crop = photo.crop((left, top, left + side, top + side)).resize((size_px, size_px), Image.LANCZOS)
        crop.save(folder / f"crop_{i:05d}.png")


@torch.no_grad()
def held_out_sharpness(cfg: AutoencoderTrainConfig, export_dir: Path) -> float:
    """Mean sharpness of the exported model's reconstructions of the run's held-out images."""
    vq = VQModel.from_pretrained(export_dir).eval()
    data = cfg.data
    dataset = build_dataset(data.source, data.resolution_px, data.builtin_samples, cfg.seed)
    _, held_out = train_held_out_split(dataset, data.held_out_samples, cfg.seed)
    ratios = []
    for images, _ in DataLoader(Subset(dataset, held_out), batch_size=64):
        reconstruction = vq(images).sample.clamp(-1, 1)
        ratios.append(sharpness(reconstruction, images))
    return torch.cat(ratios).mean().item()


def run(source: str, overrides: list[str], steps: int, held_out: int, run_dir: Path) -> dict[str, object]:
    cfg = load_config(
        AutoencoderTrainConfig,
        "vq-tiny",
        [
            *COMMON,
            f"run_dir={run_dir}",
            f"data.source={source}",
            f"data.held_out_samples={held_out}",
            f"train.max_steps={steps}",
            f"train.checkpoint_every_steps={steps}",
            *overrides,
        ],
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the job's log lines; stdout is for the table
        train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    held = metrics["held_out"]
    result = {
        "codes": VQModel.load_config(run_dir / "export")["num_vq_embeddings"],
        "codebook_usage": round(held["codebook"]["usage"], 4),
        "perplexity": round(held["codebook"]["perplexity"], 1),
        "psnr_db": round(held["psnr_db"], 2),
        "sharpness": round(held_out_sharpness(cfg, run_dir / "export"), 3),
        "export_indices_identical": metrics["export"]["indices_identical"],
        "wall_sec": round(time.perf_counter() - start, 1),
    }
    print(json.dumps({"run": run_dir.name, **result}), file=sys.stderr)
    return result


def markdown_table(results: dict[str, dict[str, dict[str, dict[str, object]]]]) -> str:
    rows = [
        "| data | size | quantizer | codes | used | perplexity | PSNR (dB) | sharpness |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for data, sizes in results.items():
        for size, variants in sizes.items():
            for name, r in variants.items():
                rows.append(
                    f"| {data} | {size} | {name} | {r['codes']} | {r['codebook_usage']:.1%} | "
                    f"{r['perplexity']:.0f} | {r['psnr_db']:.2f} | {r['sharpness']:.2f} |"
                )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of every run")
    parser.add_argument("--held-out", type=int, default=512, help="held-out images per run (64 tokens each)")
    parser.add_argument("--folder-images", type=int, default=2000, help="photo crops in the image folder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results-codebook.json")
    args = parser.parse_args()
    start = time.perf_counter()
    results: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    report = {
        "benchmark": "codebook",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": "vq-tiny made f2 at 16 px: [32, 64] blocks, 16 latent channels, 8x8 tokens; no GAN",
        "batch_size": BATCH_SIZE,
        "steps": args.steps,
        "held_out_images": args.held_out,
        "held_out_tokens": args.held_out * 64,
        "folder_images": args.folder_images,
        "results": results,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "photo_crops"
        folder.mkdir()
        write_photo_crops(folder, args.folder_images, 16, seed=0)
        for name, source in (("shapes", "builtin:shapes"), ("photo crops", str(folder))):
            for size, variants in SIZES.items():
                for variant, overrides in variants.items():
                    run_dir = work / f"{name}-{size}-{variant}".replace(" ", "_")
                    measured = run(source, overrides, args.steps, args.held_out, run_dir)
                    results.setdefault(name, {}).setdefault(size, {})[variant] = measured
                    report["total_wall_sec"] = round(time.perf_counter() - start, 1)
                    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
