"""The latent store: sharded, checksummed safetensors written by `ldm-vae encode`, read by `LatentDataset`."""
