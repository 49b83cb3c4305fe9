"""Latent store, writing side: one safetensors shard at a time, atomically, with a checksummed sidecar.

Layout of an output folder (the reader is `ldm_vae.latents.reader.LatentDataset`):
    encode.json                 what is encoded (autoencoder identity, data, options); a rerun must match
    shard-NNNNN.safetensors     rows = samples in dataset order: KL `mean`, `logvar`; VQ `latents`, `indices`;
                                `*_flip` for the flipped image when asked; `labels`, `sample_index`;
                                `captions` (UTF-8 bytes, see `caption_rows`) when the dataset has captions
    shard-NNNNN.json            sidecar: count, sha256 and the shard's latent statistics; written last,
                                so a shard without a verifying sidecar is re-encoded on a rerun
    manifest.json               written by rank 0 once every shard is done (see `build_manifest`)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ModelMixin
from safetensors.torch import save_file

from ldm_vae.models.vq_model import encode_to_codes

FORMAT = "ldm-vae-latents/1"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, value: object) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    temp.write_text(json.dumps(value, indent=2))
    os.replace(temp, path)


def autoencoder_identity(model: ModelMixin, folder: str) -> dict[str, str]:
    """Path, class and a hash of the config: a resumed encode must use the same autoencoder."""
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return {
        "path": str(Path(folder).expanduser().resolve()),
        "class": type(model).__name__,
        "config_sha256": hashlib.sha256(blob).hexdigest(),
    }


@torch.no_grad()
def encode_batch(model: ModelMixin, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """images (b, 3, H, W) in [-1, 1] -> KL posterior moments, or VQ pre-quantisation latents and codes."""
    if isinstance(model, AutoencoderKL):
        posterior = model.encode(images).latent_dist
        return {"mean": posterior.mean, "logvar": posterior.logvar}  # (b, c, h, w) each, unscaled
    latents, indices = encode_to_codes(model, images)  # (b, c, h, w), (b, h, w)
    return {"latents": latents, "indices": indices}


def caption_rows(captions: list[str]) -> torch.Tensor:
    """Captions as zero-padded rows of UTF-8 bytes, (n, longest) uint8: safetensors holds tensors only, and
    this way they sit in the shard beside their latents, under its checksum, one row readable alone."""
    encoded = [caption.encode("utf-8") for caption in captions]
    rows = torch.zeros(len(encoded), max(1, *(len(data) for data in encoded)), dtype=torch.uint8)
    for row, data in enumerate(encoded):
        rows[row, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return rows


def latent_statistics(tensors: dict[str, torch.Tensor]) -> dict[str, list[float] | int]:
    """Per-channel sums of z and z^2 over what the diffusion model sees, in float64.

    For KL, z = mean + std * eps, so E[z] = mean and E[z^2] = mean^2 + exp(logvar): exact, no noise drawn.
    """
    if "mean" in tensors:
        mean, logvar = tensors["mean"].double(), tensors["logvar"].double()
        first, second = mean, mean.square() + logvar.exp()
    else:
        first = tensors["latents"].double()
        second = first.square()
    return {
        "sum": first.sum(dim=(0, 2, 3)).tolist(),  # (c,)
        "sum_sq": second.sum(dim=(0, 2, 3)).tolist(),  # (c,)
        "elements_per_channel": first.numel() // first.shape[1],
    }


def save_shard(
    folder: Path, index: int, tensors: dict[str, torch.Tensor], storage_dtype: torch.dtype
) -> dict:
    """Write shard `index` and then its sidecar, each atomically; returns the sidecar."""
    stored = {
        key: (value.to(storage_dtype) if value.is_floating_point() else value).contiguous().cpu()
        for key, value in tensors.items()
    }
    path = folder / shard_name(index)
    temp = folder / f".tmp-{path.name}"
    # One metadata key only: safetensors serialises metadata from a hash map, so with two keys their
    # order (and the file's sha256) changes from process to process. Tensors are laid out sorted.
    save_file(stored, temp, metadata={"format": FORMAT})
    os.replace(temp, path)
    main_key = "mean" if "mean" in stored else "latents"
    sidecar = {
        "file": path.name,
        "count": int(stored[main_key].shape[0]),
        "sha256": file_sha256(path),
        "statistics": latent_statistics({k: v for k, v in stored.items() if not k.endswith("_flip")}),
    }
    if "captions" in stored:
        sidecar["captioned"] = int((stored["captions"][:, 0] != 0).sum())  # rows with a non-empty caption
    write_json_atomic(path.with_suffix(".json"), sidecar)
    return sidecar


def completed_shard(folder: Path, index: int) -> dict | None:
    """The sidecar of a shard whose file still matches its checksum, else None (encode it again)."""
    path = folder / shard_name(index)
    sidecar_path = path.with_suffix(".json")
    if not (path.is_file() and sidecar_path.is_file()):
        return None
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError:
        return None
    return sidecar if sidecar.get("sha256") == file_sha256(path) else None


def combine_statistics(sidecars: list[dict]) -> dict[str, float | list[float]]:
    """Global and per-channel mean/std of the latents, and scaling_factor = 1/std (LDM's scale_by_std)."""
    channels = len(sidecars[0]["statistics"]["sum"])
    sums, sums_sq, count = [0.0] * channels, [0.0] * channels, 0
    for sidecar in sidecars:
        stats = sidecar["statistics"]
        sums = [a + b for a, b in zip(sums, stats["sum"], strict=True)]
        sums_sq = [a + b for a, b in zip(sums_sq, stats["sum_sq"], strict=True)]
        count += stats["elements_per_channel"]
    per_mean = [s / count for s in sums]
    per_std = [max(q / count - m * m, 0.0) ** 0.5 for q, m in zip(sums_sq, per_mean, strict=True)]
    mean = sum(sums) / (count * channels)
    std = max(sum(sums_sq) / (count * channels) - mean * mean, 0.0) ** 0.5
    return {
        "mean": mean,
        "std": std,
        "scaling_factor": 1.0 / max(std, 1e-12),
        "per_channel_mean": per_mean,
        "per_channel_std": per_std,
    }
