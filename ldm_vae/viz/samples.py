"""Sample grids by class or prompt: one row each, its name written in a margin on the left."""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

LABEL_MARGIN_PX = 72  # narrowest name column; longer names (prompts) widen it
PADDING_PX = 2


def class_grid(images: Tensor, row_names: list[str] | None = None) -> Image.Image:
    """images (rows, cols, 3, h, w) in [0, 1] -> one RGB image; row r is labelled row_names[r] if given."""
    rows, cols, _, h, w = images.shape
    grid = make_grid(images.flatten(0, 1).float().clamp(0, 1), nrow=cols, padding=PADDING_PX)  # (3, H, W)
    picture = to_pil_image(grid)
    if not row_names:
        return picture
    assert len(row_names) == rows, f"{len(row_names)} row names for {rows} rows"
    font = ImageFont.load_default()
    margin = max(LABEL_MARGIN_PX, 8 + max(int(font.getlength(name)) for name in row_names))
    labelled = Image.new("RGB", (picture.width + margin, picture.height), "white")
    labelled.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    for r, name in enumerate(row_names):
        y = PADDING_PX + r * (h + PADDING_PX) + h // 2
        draw.text((4, y), name, fill="black", font=font, anchor="lm")
    return labelled


def save_class_grid(images: Tensor, path: str | os.PathLike, row_names: list[str] | None = None) -> None:
    """Write `class_grid(images, row_names)` as a PNG at `path`, creating its folder."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    class_grid(images, row_names).save(path)
