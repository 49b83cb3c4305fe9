"""The latent store: sharded, checksummed safetensors written by `ldm-vae encode`, read by `LatentDataset`."""

from ldm_vae.latents.reader import LatentDataset, read_manifest
from ldm_vae.latents.stream import PositionSeededLatents

__all__ = ["LatentDataset", "PositionSeededLatents", "read_manifest"]
