"""The latent store: sharded, checksummed safetensors written by `ldm-vae encode`, read by `LatentDataset`."""

from ldm_vae.latents.reader import LatentDataset, read_manifest

__all__ = ["LatentDataset", "read_manifest"]
