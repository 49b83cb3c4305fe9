"""Side-by-side grids of originals and autoencoder reconstructions, as in the LDM paper's figures.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022), Appendix G shows
first-stage reconstructions next to their inputs; here each original sits directly above its reconstruction.
"""

import os

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

MAX_COLUMNS = 8  # images per row; larger batches wrap into further (originals, reconstructions) row pairs


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] in fp32 on the CPU, clipped."""
    return ((x.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)


def reconstruction_grid(originals: Tensor, reconstructions: Tensor, padding: int = 2) -> Tensor:
    """A (3, H, W) image in [0, 1]: rows of up to 8 originals, each above a row of their reconstructions.

    Inputs are (b, 3, h, w) in [-1, 1]. With cols = min(b, 8) and rows = 2 * ceil(b / cols), the grid is
    H = rows * (h + padding) + padding by W = cols * (w + padding) + padding; a partial last row is black.
    Ready for `SummaryWriter.add_image`.
    """
    assert originals.shape == reconstructions.shape, (
        f"originals {tuple(originals.shape)} and reconstructions {tuple(reconstructions.shape)} differ"
    )
    b, c, h, w = originals.shape
    cols = min(b, MAX_COLUMNS)
    originals, reconstructions = _to_unit(originals), _to_unit(reconstructions)
    rows: list[Tensor] = []
    for start in range(0, b, cols):
        for batch in (originals, reconstructions):
            row = batch[start : start + cols]  # (<= cols, c, h, w)
            blank = row.new_zeros(cols - row.shape[0], c, h, w)  # black fill keeps the pairs aligned
            rows.append(torch.cat([row, blank]))
    return make_grid(torch.cat(rows), nrow=cols, padding=padding)  # (3, H, W)


def save_reconstruction_grid(originals: Tensor, reconstructions: Tensor, path: str | os.PathLike) -> None:
    """Write `reconstruction_grid(originals, reconstructions)` to a PNG at `path`, creating its folder."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    save_image(reconstruction_grid(originals, reconstructions), path)
