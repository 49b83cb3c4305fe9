"""A folder of images as a labelled dataset, robust to the odd modes and broken files real folders contain.

Every file is decoded once at scan time (in threads: PIL releases the GIL while decoding), so a truncated,
corrupt or mislabelled file is skipped and reported up front instead of killing a run hours in. Labels come
from the first-level sub-folders, as in torchvision's ImageFolder.
"""

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ldm_vae.data.transforms import image_transform
from ldm_vae.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # matched case-insensitively
ROOT_CLASS = "."  # class name of images lying directly in the root folder
_MAX_LISTED_SKIPS = 10  # names shown by skip_report(); the rest are counted
_WHITE = (255, 255, 255, 255)  # transparent pixels are composited over this

# ---------------------------------------------------------------------------------------------------------
# helpers


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


def load_rgb(path: Path, resolution_px: int) -> Image.Image:
    """Fully decode one file into an upright RGB image; raises whatever the decoder raises."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (resolution_px, resolution_px))  # DCT-domain downscale, still >= R per side
        image.load()  # full decode: PIL's LOAD_TRUNCATED_IMAGES stays False, so truncation raises here
        return to_rgb(ImageOps.exif_transpose(image))  # camera orientation tag applied


def _describe_failure(error: Exception) -> str:
    """One-line reason for the skip report."""
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image"
    message = str(error).splitlines()[0] if str(error) else ""
    if "truncat" in message.lower():
        return "truncated"
    return f"{type(error).__name__}: {message}"[:100]


def _skip_reason(path: Path, resolution_px: int) -> str | None:
    """None if `path` decodes to RGB, else why not."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        load_rgb(path, resolution_px)
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, ...
        return _describe_failure(error)
    return None


def _scan(root: Path) -> list[Path]:
    """Image files under root, sorted by relative path; follows symlinks, ignores hidden files and folders."""
    found: list[Path] = []
    visited: set[str] = set()
    for dir_path, dir_names, file_names in os.walk(root, followlinks=True):
        real = os.path.realpath(dir_path)
        if real in visited:  # a symlink loop, or two links to one folder
            dir_names[:] = []
            continue
        visited.add(real)
        dir_names[:] = [name for name in dir_names if not name.startswith(".")]
        for name in file_names:
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dir_path, name).relative_to(root))
    return sorted(found, key=lambda rel: rel.as_posix())


def _class_name(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else ROOT_CLASS


# ---------------------------------------------------------------------------------------------------------
# main class


class ImageFolderDataset(Dataset):
    """Images under `root`, resized (shorter side) and centre-cropped to (3, R, R) float32 in [-1, 1].

    Labels: each first-level sub-folder is a class; images directly in `root` form a class named "." (which
    sorts first). With no sub-folders every image has label 0. Only classes with at least one readable image
    exist. Transparent pixels are composited over white.
    """

    def __init__(self, root: str | Path, resolution_px: int) -> None:
        self.root = Path(root).expanduser()
        self.resolution_px = resolution_px
        if not self.root.exists():
            raise ConfigError(f"data.source='{self.root}': folder does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"data.source='{self.root}': is a file; point it at a folder of images")

        candidates = _scan(self.root)
        with ThreadPoolExecutor() as pool:
            reasons = list(pool.map(lambda rel: _skip_reason(self.root / rel, resolution_px), candidates))
        self.num_seen = len(candidates)
        pairs = list(zip(candidates, reasons, strict=True))
        self.skipped: list[tuple[str, str]] = [(rel.as_posix(), why) for rel, why in pairs if why is not None]
        kept = [rel for rel, why in pairs if why is None]
        if not kept:
            raise ConfigError(
                f"data.source='{self.root}': no readable images ({self.num_seen} files with suffixes "
                f"{'/'.join(IMAGE_SUFFIXES)} seen, {len(self.skipped)} skipped"
                + (f": {self._listed_skips()}" if self.skipped else "")
                + "); point it at a folder of images"
            )

        self.classes: list[str] = sorted({_class_name(rel) for rel in kept})
        label_of = {name: label for label, name in enumerate(self.classes)}
        self.keys: list[str] = [rel.as_posix() for rel in kept]  # relative posix paths, the split's keys
        self.paths: list[Path] = [self.root / rel for rel in kept]
        self.labels: list[int] = [label_of[_class_name(rel)] for rel in kept]
        self.transform = image_transform(resolution_px)
        self._warned: set[int] = set()  # indices already reported as unreadable by this process

    def __len__(self) -> int:
        return len(self.paths)

    def _listed_skips(self) -> str:
        listed = ", ".join(f"{rel} ({reason})" for rel, reason in self.skipped[:_MAX_LISTED_SKIPS])
        return listed + (", ..." if len(self.skipped) > _MAX_LISTED_SKIPS else "")

    def skip_report(self) -> str:
        """One line for the log: how many files were skipped and why (the first few by name)."""
        summary = f"skipped {len(self.skipped)} of {self.num_seen} files under {self.root}"
        return f"{summary}: {self._listed_skips()}" if self.skipped else summary

    def sample_key(self, i: int) -> str:
        """Relative posix path of sample i: stable as files are added, so the held-out split hashes it."""
        return self.keys[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Sample i; if its file broke after the scan, the next readable one (a warning names the file)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for ImageFolderDataset of {len(self)} images")
        for offset in range(len(self)):
            j = (i + offset) % len(self)
            try:
                image = load_rgb(self.paths[j], self.resolution_px)
            except Exception as error:  # changed on disk since the scan; a run must not die for one file
                if j not in self._warned:
                    self._warned.add(j)
                    reason = _describe_failure(error)
                    logger.warning("skipping unreadable image %s (%s)", self.paths[j], reason)
                continue
            return self.transform(image), self.labels[j]  # (3, R, R) in [-1, 1]
        raise ConfigError(
            f"data.source='{self.root}': none of the {len(self)} scanned images is readable now"
        )
