"""Tests for ldm_vae.viz: grid layout and PNG sizes, headless loss curves with ragged rows."""

import math

import pytest
import torch
from PIL import Image

from ldm_vae.viz import reconstruction_grid, save_loss_curves, save_reconstruction_grid


@pytest.mark.parametrize(("b", "rows", "cols"), [(3, 2, 3), (8, 2, 8), (12, 4, 8)])
def test_reconstruction_grid_layout(tmp_path, b, rows, cols):
    h, w = 16, 24
    originals = torch.full((b, 3, h, w), -1.0)  # black
    reconstructions = torch.ones(b, 3, h, w)  # white
    grid = reconstruction_grid(originals, reconstructions)
    assert grid.shape == (3, rows * (h + 2) + 2, cols * (w + 2) + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    # a pixel inside the first reconstruction (second row) is white, the original above it black
    assert grid[:, 2 + h // 2, 2 + w // 2].eq(0).all() and grid[:, h + 4 + h // 2, 2 + w // 2].eq(1).all()
    path = tmp_path / "sub" / "grid.png"
    save_reconstruction_grid(originals, reconstructions, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (grid.shape[2], grid.shape[1])


def test_reconstruction_grid_wraps_in_row_pairs():
    b, h, w = 10, 8, 8
    originals = -torch.ones(b, 3, h, w)
    reconstructions = torch.ones(b, 3, h, w)
    grid = reconstruction_grid(originals, reconstructions)  # rows: orig 0-7, rec 0-7, orig 8-9, rec 8-9
    row_value = [grid[0, 2 + r * (h + 2) + h // 2, 2 + w // 2].item() for r in range(4)]
    assert row_value == [0.0, 1.0, 0.0, 1.0]
    assert grid[:, 2 + 3 * (h + 2) + h // 2, 2 + 5 * (w + 2) + w // 2].eq(0).all()  # blank fill of row 4


def test_loss_curves_headless_with_missing_keys(tmp_path):
    stats = [
        {"step": 0, "train/rec_loss": 0.5, "train/kl_loss": 1e3, "lr": 1e-4},
        {"step": 10, "train/rec_loss": 0.3, "train/kl_loss": 2e3, "train/d_loss": 1.0},
        {"step": 20, "train/rec_loss": 0.2, "train/d_loss": -0.5, "note": "resumed", "flag": True},
        {"train/rec_loss": 0.1},  # no step: skipped
        {"step": 30, "train/rec_loss": math.nan},  # non-finite: skipped
    ]
    path = tmp_path / "plots" / "loss.png"
    save_loss_curves(stats, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    save_loss_curves(stats, tmp_path / "two.png", keys=["train/d_loss", "val/psnr"])  # val/psnr: no data
    with Image.open(tmp_path / "two.png") as image:
        assert image.size[0] == width and image.size[1] < height  # 2 panels vs 4 (rec, kl, lr, d)
    save_loss_curves([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0
