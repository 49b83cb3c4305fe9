"""Datasets and transforms; `build_dataset` turns the `data.source` string into a dataset.

Sources are named one way everywhere: `builtin:NAME`, a folder path, `hf:NAME[:split]`, `wds:PATTERN`.
Every dataset yields (image (3, R, R) float32 in [-1, 1], label int) and has `classes` and `sample_key(i)`;
folders, hf: and wds: (`IndexedImageDataset`) also have `caption(i)`, `fingerprint`, `skipped` and
`record_skips_to(path)` (see indexed.py).
"""

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ldm_vae.data.decode import load_rgb, to_rgb
from ldm_vae.data.folder import ImageFolderDataset
from ldm_vae.data.indexed import IndexedImageDataset, read_skips
from ldm_vae.data.sampler import StreamSampler
from ldm_vae.data.shapes import HELD_OUT_COMBINATIONS, SHAPE_KINDS, ShapesDataset
from ldm_vae.data.split import spread_picks, train_held_out_split
from ldm_vae.data.transforms import RandomFlipView, image_transform
from ldm_vae.data.wds import WebDatasetShards
from ldm_vae.errors import ConfigError

__all__ = [
    "BUILTIN_DATASETS",
    "SHAPE_KINDS",
    "ImageFolderDataset",
    "IndexedImageDataset",
    "RandomFlipView",
    "ShapesDataset",
    "StreamSampler",
    "WebDatasetShards",
    "build_dataset",
    "image_transform",
    "load_rgb",
    "read_skips",
    "source_columns",
    "spread_picks",
    "stack_items",
    "stream_shards",
    "to_rgb",
    "train_held_out_split",
]

BUILTIN_DATASETS = ["shapes", "shapes-text"]  # names accepted after `builtin:`; shapes-text: named colours,
# HELD_OUT_COMBINATIONS never drawn (a text-to-image test of unseen colour-shape pairs)
MIN_RESOLUTION_PX = 8


def build_dataset(
    source: str,
    resolution_px: int,
    builtin_samples: int,
    seed: int,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    caption_column: str | None = None,
) -> ShapesDataset | IndexedImageDataset:
    """The dataset named by `data.source`; every user mistake is a one-line ConfigError.

    The columns (`data.image_column`, ...) name hf: columns or wds: member extensions; None detects them.
    """
    if resolution_px < MIN_RESOLUTION_PX:
        raise ConfigError(f"data.resolution_px={resolution_px} must be >= {MIN_RESOLUTION_PX}")
    if not source:
        raise ConfigError("data.source is empty; use builtin:shapes or a folder of images")
    kind, _, name = source.partition(":")
    if kind == "builtin":
        if name not in BUILTIN_DATASETS:
            available = ", ".join(f"builtin:{known}" for known in BUILTIN_DATASETS)
            raise ConfigError(f"data.source='{source}': unknown builtin dataset; available: {available}")
        if name == "shapes-text":
            return ShapesDataset(builtin_samples, resolution_px, seed, "named", HELD_OUT_COMBINATIONS)
        return ShapesDataset(builtin_samples, resolution_px, seed)
    columns = {"image_column": image_column, "label_column": label_column, "caption_column": caption_column}
    if kind == "wds":
        return WebDatasetShards(name, resolution_px, **columns)
    if kind == "hf":
        from ldm_vae.data.hf import HuggingFaceImages  # imports `datasets` (about a second) only when used

        return HuggingFaceImages(name, resolution_px, **columns)
    named = [f"data.{key}='{value}'" for key, value in columns.items() if value is not None]
    if named:
        raise ConfigError(f"{', '.join(named)}: only hf: and wds: sources have columns, not '{source}'")
    return ImageFolderDataset(Path(source), resolution_px)


def source_columns(settings: object) -> dict[str, str | None]:
    """`image_column`, `label_column`, `caption_column` of a DataConfig or of parsed command options."""
    return {
        name: getattr(settings, name, None) for name in ("image_column", "label_column", "caption_column")
    }


def stream_shards(dataset: Dataset, order: str, source: str) -> list[range] | None:
    """The shards a `data.order=shards` stream hands to its readers; None in global order."""
    if order == "global":
        return None
    shard_ranges = getattr(dataset, "shard_ranges", None)
    if shard_ranges is None:
        raise ConfigError(
            f"data.order={order}: data.source='{source}' is not stored in shards (wds: and hf: are); "
            "use data.order=global"
        )
    return shard_ranges()


def stack_items(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, R, R) in [-1, 1] and labels (n,) of `dataset[i]` for i in `indices`, in memory."""
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])
