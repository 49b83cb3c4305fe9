"""Any image file into upright 8-bit RGB, robust to the odd modes and broken files real datasets contain."""

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_WHITE = (255, 255, 255, 255)  # transparent pixels are composited over this


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha is composited over white; 16-bit grey is rescaled, not clipped."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's own convert clips these at 255. Older Pillows open 16-bit PNGs as "I": read it as 16-bit too.
        grey = np.asarray(image).astype(np.float64)  # (H, W) in [0, 65535]
        grey_u8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)  # 65535 / 255 = 257
        return Image.fromarray(grey_u8, mode="L").convert("RGB")
    if image.mode == "F":
        grey = np.asarray(image, dtype=np.float64)  # (H, W), float images are taken to be in [0, 1]
        grey_u8 = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey_u8, mode="L").convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # palette / colour-key transparency becomes a real alpha channel
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def load_rgb(file: str | Path | BinaryIO, resolution_px: int) -> Image.Image:
    """Fully decode an image (a path or a binary file) to upright RGB; raises what the decoder raises."""
    with Image.open(file) as image:
        if image.format == "JPEG":
            image.draft("RGB", (resolution_px, resolution_px))  # DCT-domain downscale, still >= R per side
        image.load()  # full decode: PIL's LOAD_TRUNCATED_IMAGES stays False, so truncation raises here
        return to_rgb(ImageOps.exif_transpose(image))  # camera orientation tag applied


def describe_failure(error: Exception) -> str:
    """One-line reason a file did not decode, for skip reports."""
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image"
    message = str(error).splitlines()[0] if str(error) else ""
    if "truncat" in message.lower():
        return "truncated"
    return f"{type(error).__name__}: {message}"[:100]
