"""Export a trained autoencoder as a diffusers folder, with its measured latent scale, and prove it reloads.

KL: the AutoencoderKL itself. VQ: a plain VQModel with our quantizer's projections folded into
`quant_conv` / `post_quant_conv` (`export_vqmodel`). `scaling_factor = 1 / std(z)` is measured with the
exported model over training images, on what a diffusion model will see: posterior samples (KL, LDM's
`scale_by_std` over many images rather than its first batch) or pre-quantisation latents (VQ, as LDM).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ModelMixin, VQModel
from torch.utils.data import DataLoader, Dataset, Subset

from ldm_vae.models.vq_model import export_vqmodel, image_to_indices
from ldm_vae.seeds import torch_generator


def exportable(trained: ModelMixin) -> ModelMixin:
    """The CPU fp32 diffusers model to save (master weights are fp32)."""
    if isinstance(trained, AutoencoderKL):
        return copy.deepcopy(trained).to("cpu").eval()
    return export_vqmodel(trained)


@torch.no_grad()
def diffusion_latents(model: ModelMixin, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a latent diffusion model trains on: z = mean + std * eps (KL), or pre-quantisation z (VQ)."""
    if isinstance(model, AutoencoderKL):
        posterior = model.encode(images).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(images.device)
        return posterior.mean + posterior.std * noise
    return model.encode(images).latents


@torch.no_grad()
def measure_latent_statistics(
    model: ModelMixin, dataset: Dataset, indices: list[int], batch_size: int, seed: int
) -> dict[str, float]:
    """Mean and std over every latent element of `indices`, and scaling_factor = 1/std."""
    device = next(model.parameters()).device
    generator = torch_generator(seed, "export_statistics")  # the posterior draws of the measurement
    total, total_sq, count = 0.0, 0.0, 0
    for images, _ in DataLoader(Subset(dataset, indices), batch_size=batch_size):
        latents = diffusion_latents(model, images.to(device), generator).double()  # (b, c, h, w)
        total += latents.sum().item()
        total_sq += latents.square().sum().item()
        count += latents.numel()
    mean = total / count
    std = max(total_sq / count - mean**2, 0.0) ** 0.5
    return {"latent_mean": mean, "latent_std": std, "scaling_factor": 1.0 / max(std, 1e-12)}


def save_export(exported: ModelMixin, out_dir: Path, scaling_factor: float) -> Path:
    """save_pretrained (safetensors) with the measured `scaling_factor` in the config."""
    exported.register_to_config(scaling_factor=float(scaling_factor))
    exported.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@torch.no_grad()
def verify_export(trained: ModelMixin, out_dir: Path, images: torch.Tensor) -> dict[str, object]:
    """Reload from disk: no missing/unexpected/mismatched keys; outputs (and VQ codes) equal on CPU fp32.

    KL outputs are bit-identical. VQ codes are identical; VQ reconstructions differ by float rounding
    only, because the export multiplies the projections into the 1x1 convs.
    """
    reference = copy.deepcopy(trained).to("cpu").eval()
    cls = AutoencoderKL if isinstance(trained, AutoencoderKL) else VQModel
    reloaded, info = cls.from_pretrained(out_dir, output_loading_info=True, local_files_only=True)
    problems = {key: list(value) for key, value in info.items() if value}
    if problems:  # diffusers only warns, and leaves what it did not load uninitialised: stop here
        return {"loading_problems": problems, "outputs_bit_identical": False, "max_abs_difference": None}
    reloaded.eval()
    images = images.to("cpu", torch.float32)
    expected, got = reference(images).sample, reloaded(images).sample
    report = {
        "loading_problems": problems,
        "outputs_bit_identical": bool(torch.equal(expected, got)),
        "max_abs_difference": float((expected - got).abs().max()),
        "scaling_factor": reloaded.config.scaling_factor,
    }
    if not isinstance(trained, AutoencoderKL):
        report["indices_identical"] = bool(
            torch.equal(image_to_indices(reference, images), image_to_indices(reloaded, images))
        )
    return report
