"""A labelled image folder that is not the shapes, for `ldm-vae demo --data FOLDER` (issue 14: the recipe
must carry to other data).

The images are scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: the UCI optdigits
test set, 1797 scans of 43 writers, 8x8 pixels in 17 grey levels, 10 classes), so nothing is downloaded.
Each is upscaled bicubically to --resolution and written as an RGB PNG under one sub-folder per class,
the layout `train-ae`, `encode` and the demo read as a labelled folder.

    python benchmarks/digits_folder.py --out runs/digits [--resolution 32]
    ldm-vae demo --data runs/digits --run-dir runs/demo-digits

Needs scikit-learn (`pip install -e .[bench]`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GREY_LEVELS = 16  # optdigits pixels count 0..16 set cells of a 4x4 block


def write_folder(images: np.ndarray, labels: np.ndarray, out: Path, resolution_px: int) -> int:
    """Images (n, h, w) in [0, GREY_LEVELS] with labels (n,) in 0..9 -> out/<class>/<index>.png, white
    strokes on black, upscaled bicubically to resolution_px; returns the number written."""
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"images {images.shape} and labels {labels.shape}: expected (n, h, w) and (n,)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out}: not empty; give a new folder")
    for name in CLASS_NAMES:
        (out / name).mkdir(parents=True, exist_ok=True)
    grey = np.clip(images / GREY_LEVELS * 255.0, 0, 255).round().astype(np.uint8)
    for index, (pixels, label) in enumerate(zip(grey, labels, strict=True)):
        image = Image.fromarray(pixels, mode="L").resize((resolution_px,) * 2, Image.Resampling.BICUBIC)
        image.convert("RGB").save(out / CLASS_NAMES[int(label)] / f"{index:04d}.png")
    return len(images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder: one sub-folder per digit")
    parser.add_argument("--resolution", type=int, default=32, help="side in pixels (the demo's is 32)")
    args = parser.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("digits_folder: error: needs scikit-learn; pip install -e .[bench]", file=sys.stderr)
        return 2
    digits = load_digits()
    try:
        count = write_folder(digits.images, digits.target, Path(args.out), args.resolution)
    except (ValueError, FileExistsError) as error:
        print(f"digits_folder: error: {error}", file=sys.stderr)
        return 2
    print(f"{count} images of {len(CLASS_NAMES)} classes at {args.resolution} px in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
