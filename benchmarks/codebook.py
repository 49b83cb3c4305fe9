"""Codebook health: the plain VQ-VAE quantizer against our default, same model, data and steps.

"plain" is van den Oord et al.'s VQ-VAE: codebook trained by its gradient loss, uniform init, no
restarts, Euclidean lookup in the full latent dimension. "ours" is the vq-tiny default: EMA codebook,
k-means init, dead-code restart, l2-normalised 8-d codes. Both train the vq-tiny model (1024 codes)
without the GAN, on the built-in shapes and on an image folder of random crops of matplotlib's sample
photograph (a real image, shipped with matplotlib, so nothing is downloaded). Prints one JSON object.

    python benchmarks/codebook.py [--steps 800]
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
from matplotlib import cbook
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.train.autoencoder import train  # noqa: E402

from ldm_vae.config import AutoencoderTrainConfig, load_config  # noqa: E402

VARIANTS = {
    "plain": [
        "model.quantizer.update=gradient",
        "model.quantizer.kmeans_init=false",
        "model.quantizer.dead_code_window_steps=0",
        "model.quantizer.use_cosine=false",
        "model.quantizer.code_dim=null",
    ],
    "ours": [],
}


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


def run(source: str, variant: str, steps: int, work: Path) -> dict[str, object]:
    run_dir = work / f"{Path(source).name or source}-{variant}".replace(":", "_")
    overrides = [
        f"run_dir={run_dir}",
        f"data.source={source}",
        f"train.max_steps={steps}",
        "loss.disc_weight=0",
        f"train.checkpoint_every_steps={steps}",
        *VARIANTS[variant],
    ]
    cfg = load_config(AutoencoderTrainConfig, "vq-tiny", overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the job's log lines; stdout is for the JSON
        train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    held_out = metrics["held_out"]
    return {
        "codebook_usage": held_out["codebook"]["usage"],
        "perplexity": held_out["codebook"]["perplexity"],
        "psnr_db": held_out["psnr_db"],
        "bicubic_psnr_db": held_out["bicubic_psnr_db"],
        "export_indices_identical": metrics["export"]["indices_identical"],
        "wall_sec": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--folder-images", type=int, default=4000)
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "photo_crops"
        folder.mkdir()
        write_photo_crops(folder, args.folder_images, 32, seed=0)
        for source in ("builtin:shapes", str(folder)):
            name = "builtin:shapes" if source.startswith("builtin") else "folder:photo_crops"
            results[name] = {variant: run(source, variant, args.steps, work) for variant in VARIANTS}
    print(
        json.dumps(
            {
                "benchmark": "codebook",
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
                "cpu_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "preset": "vq-tiny (1024 codes, no GAN)",
                "steps": args.steps,
                "results": results,
                "target": "ours uses >= 95% of the 1024 codes",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
