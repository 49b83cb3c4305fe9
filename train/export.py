"""Export a trained autoencoder as a diffusers folder, with its measured latent scale, and prove it reloads.

`scaling_factor = 1 / std(z)` over posterior samples of training images (LDM's `scale_by_std`, measured
over many images rather than LDM's first batch), written into the config that `save_pretrained` writes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader, Dataset, Subset


@torch.no_grad()
def measure_latent_statistics(
    vae: AutoencoderKL, dataset: Dataset, indices: list[int], batch_size: int, seed: int
) -> dict[str, float]:
    """Mean and std of z = mean + std * eps (what the diffusion model sees) over `indices`."""
    device = next(vae.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    for images, _ in DataLoader(Subset(dataset, indices), batch_size=batch_size):
        posterior = vae.encode(images.to(device)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
        latents = (posterior.mean + posterior.std * noise).double()  # (b, c, h, w)
        total += latents.sum().item()
        total_sq += latents.square().sum().item()
        count += latents.numel()
    mean = total / count
    std = max(total_sq / count - mean**2, 0.0) ** 0.5
    return {"latent_mean": mean, "latent_std": std, "scaling_factor": 1.0 / max(std, 1e-12)}


def export_autoencoder(vae: AutoencoderKL, out_dir: Path, scaling_factor: float) -> Path:
    """save_pretrained (safetensors) of a CPU fp32 copy with `scaling_factor` in its config."""
    exported = copy.deepcopy(vae).to("cpu").eval()  # master weights are fp32
    exported.register_to_config(scaling_factor=float(scaling_factor))
    exported.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@torch.no_grad()
def verify_export(vae: AutoencoderKL, out_dir: Path, images: torch.Tensor) -> dict[str, object]:
    """Reload from disk: no missing/unexpected/mismatched keys, and bit-identical fp32 CPU outputs."""
    reference = copy.deepcopy(vae).to("cpu").eval()
    reloaded, info = AutoencoderKL.from_pretrained(out_dir, output_loading_info=True, local_files_only=True)
    reloaded.eval()
    images = images.to("cpu", torch.float32)
    expected, got = reference(images).sample, reloaded(images).sample
    problems = {key: list(value) for key, value in info.items() if value}
    return {
        "loading_problems": problems,
        "outputs_bit_identical": bool(torch.equal(expected, got)),
        "max_abs_difference": float((expected - got).abs().max()),
        "scaling_factor": reloaded.config.scaling_factor,
    }
