"""benchmarks/digits_folder.py: scikit-learn's bundled digits become a labelled folder the demo's data
source reads, one class per digit, every image at the asked size; a non-empty --out is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ldm_vae.data import build_dataset

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "digits_folder.py"
spec = importlib.util.spec_from_file_location("digits_folder", SCRIPT)
digits_folder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digits_folder)


def test_digits_become_a_labelled_folder(tmp_path):
    digits = load_digits()
    chosen = np.arange(0, len(digits.target), 60)  # 30 images, every class
    out = tmp_path / "digits"
    assert digits_folder.write_folder(digits.images[chosen], digits.target[chosen], out, 16) == len(chosen)
    dataset = build_dataset(str(out), 16, 0, 0)
    assert dataset.classes == sorted(digits_folder.CLASS_NAMES) and len(dataset) == len(chosen)
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and -1 <= image.min() < image.max() <= 1
    assert dataset.classes[label] in digits_folder.CLASS_NAMES
    with pytest.raises(FileExistsError, match="not empty"):
        digits_folder.write_folder(digits.images[:1], digits.target[:1], out, 16)
