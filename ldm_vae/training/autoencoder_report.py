"""End of a run: export the EMA autoencoder, evaluate it on held-out images, and write the run report.

The run folder gets `export/` (a diffusers folder), `reconstructions.png` (originals above
reconstructions), `loss_curves.png` and `metrics.json`. `ldm-vae export` calls `export_and_report` on
any checkpoint of a train-ae run; the training job calls `finish_run`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ModelMixin
from torch.utils.data import DataLoader, Dataset, Subset

from ldm_vae.config import AutoencoderTrainConfig
from ldm_vae.data import read_skips, spread_picks
from ldm_vae.metrics import active_channels, bicubic_baseline, kl_per_channel, psnr, ssim
from ldm_vae.models import downsampling_factor_of, encode_to_codes
from ldm_vae.models.export import exportable, measure_latent_statistics, save_export, verify_export
from ldm_vae.models.quantizer import codebook_usage
from ldm_vae.training.run import TrainingRun
from ldm_vae.training.tracking import read_stats
from ldm_vae.viz import save_loss_curves, save_reconstruction_grid

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; capped so averages stay finite
LOSS_CURVE_KEYS = [
    "train/loss",
    "train/rec_loss",
    "train/kl_loss",
    "train/vq_loss",
    "codebook/batch_usage",
    "train/g_adv_loss",
    "train/d_loss",
    "train/adaptive_weight",
]


@torch.no_grad()
def encode_decode(model: ModelMixin, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Deterministic reconstruction and the latents it came from: the posterior mode (KL), or the
    pre-quantisation latents and their codes (VQ)."""
    if isinstance(model, AutoencoderKL):
        posterior = model.encode(images).latent_dist
        return model.decode(posterior.mean).sample, posterior.mean, {"logvar": posterior.logvar}
    latents, codes = encode_to_codes(model, images)  # (b, c, h, w), (b, h, w)
    return model.decode(latents).sample, latents, {"indices": codes.reshape(len(images), -1)}


@torch.no_grad()
def evaluate_reconstruction(
    model: ModelMixin, dataset: Dataset, indices: list[int], batch_size: int
) -> dict[str, object]:
    """Held-out fidelity, the bicubic floor at the latent size, and latent (KL) or codebook (VQ) health."""
    device = next(model.parameters()).device
    factor = downsampling_factor_of(model)
    scores: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": [], "bicubic_psnr": []}
    means, kl_sums, codes = [], [], []
    for images, _ in DataLoader(Subset(dataset, indices), batch_size=batch_size):
        images = images.to(device)
        reconstruction, latents, extra = encode_decode(model, images)
        reconstruction = reconstruction.float().clamp(-1, 1)
        scores["psnr"].append(psnr(reconstruction, images).clamp(max=PSNR_CAP_DB).cpu())
        scores["ssim"].append(ssim(reconstruction, images).cpu())
        bicubic = bicubic_baseline(images, factor)
        scores["bicubic_psnr"].append(psnr(bicubic, images).clamp(max=PSNR_CAP_DB).cpu())
        means.append(latents.float().cpu())
        if "logvar" in extra:
            kl_sums.append(kl_per_channel(latents.float(), extra["logvar"].float()).cpu() * len(images))
        else:
            codes.append(extra["indices"].cpu())
    all_means = torch.cat(means)  # (n, c, h, w)
    active, variances = active_channels(all_means)
    result = {key: torch.cat(values).mean().item() for key, values in scores.items()}
    report = {
        "images": len(indices),
        "psnr_db": result["psnr"],
        "ssim": result["ssim"],
        "bicubic_psnr_db": result["bicubic_psnr"],
        "beats_bicubic": result["psnr"] > result["bicubic_psnr"],
        "latent_shape": list(all_means.shape[1:]),
        "active_channels": active,
        "latent_variance_per_channel": variances.tolist(),
    }
    if kl_sums:
        report["kl_per_channel"] = (torch.stack(kl_sums).sum(0) / len(indices)).tolist()
    else:
        report["codebook"] = codebook_usage(torch.cat(codes), model.config.num_vq_embeddings)
    return report


def export_and_report(
    cfg: AutoencoderTrainConfig,
    vae: ModelMixin,
    dataset: Dataset,
    train_indices: list[int],
    held_out_indices: list[int],
    extra: dict[str, object],
) -> dict[str, object]:
    """`vae` (AutoencoderKL, or VQModel with our quantizer) must hold the weights to export (the EMA).
    Writes everything into cfg.run_dir."""
    run_dir = Path(cfg.run_dir)
    vae.eval()
    device = next(vae.parameters()).device
    batch_size = max(cfg.train.batch_size, 8)
    scaling_indices = spread_picks(train_indices, cfg.export.scaling_samples)
    exported = exportable(vae).to(device)
    statistics = measure_latent_statistics(exported, dataset, scaling_indices, batch_size, cfg.seed)
    export_dir = save_export(exported.to("cpu"), run_dir / "export", statistics["scaling_factor"])
    sample_images = torch.stack(
        [dataset[i][0] for i in spread_picks(held_out_indices, cfg.export.report_samples)]
    )
    export_check = verify_export(vae, export_dir, sample_images)
    held_out = evaluate_reconstruction(vae, dataset, held_out_indices, batch_size)

    with torch.no_grad():
        reconstructions = vae(sample_images.to(device)).sample.float().clamp(-1, 1).cpu()
    save_reconstruction_grid(sample_images, reconstructions, run_dir / "reconstructions.png")
    stats = read_stats(run_dir)
    if stats:
        keys = [key for key in LOSS_CURVE_KEYS if any(key in row for row in stats)]
        save_loss_curves(stats, run_dir / "loss_curves.png", keys=keys)
    metrics = {
        **extra,
        "held_out": held_out,
        "latent_statistics": {**statistics, "images": len(scaling_indices)},
        "export": {"dir": str(export_dir), **export_check},
        # left out when indexing, then replaced when read because they did not decode (named once each)
        "skipped_files": [
            list(item) for item in getattr(dataset, "skipped", []) + read_skips(run_dir / "skipped.jsonl")
        ],
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def export_ok(check: dict[str, object]) -> bool:
    """No key problems, and the same outputs (VQ: the same codes, outputs up to the folding's rounding)."""
    if check["loading_problems"]:
        return False
    if "indices_identical" in check:
        return bool(check["indices_identical"]) and check["max_abs_difference"] < 1e-4
    return bool(check["outputs_bit_identical"])


def finish_run(
    cfg: AutoencoderTrainConfig,
    run: TrainingRun,
    dataset: Dataset,
    train_indices: list[int],
    held_out_indices: list[int],
) -> None:
    """On every process after the loop: last checkpoint and replica check (collective), then the main
    process exports the EMA weights and writes the report."""
    extra = run.finish()
    if run.accelerator.is_main_process and not run.sharded:
        vae, ema, tracker = run.ema_target, run.ema, run.tracker
        ema.store(vae.parameters())
        ema.copy_to(vae.parameters())
        try:
            metrics = export_and_report(cfg, vae, dataset, train_indices, held_out_indices, extra)
        finally:
            ema.restore(vae.parameters())
        held_out = metrics["held_out"]
        tracker.info(
            f"held-out PSNR {held_out['psnr_db']:.2f} dB (bicubic {held_out['bicubic_psnr_db']:.2f} dB), "
            f"SSIM {held_out['ssim']:.3f}, active channels {held_out['active_channels']}/"
            f"{held_out['latent_shape'][0]}, scaling_factor "
            f"{metrics['latent_statistics']['scaling_factor']:.4f}; exported to {metrics['export']['dir']}"
        )
        active, channels = held_out["active_channels"], held_out["latent_shape"][0]
        if "kl_per_channel" in held_out and active < channels:
            tracker.info(
                f"WARNING: only {active} of {channels} latent channels are active "
                "(posterior collapse: lower loss.kl_weight or train longer)"
            )
        if "codebook" in held_out:
            usage = held_out["codebook"]
            tracker.info(
                f"codebook: {usage['usage']:.1%} of codes used, perplexity {usage['perplexity']:.1f}"
            )
            if usage["usage"] < cfg.model.quantizer.usage_warning_below:
                tracker.info(
                    f"WARNING: codebook usage {usage['usage']:.1%} is below "
                    f"model.quantizer.usage_warning_below={cfg.model.quantizer.usage_warning_below}"
                )
        if not export_ok(metrics["export"]):
            tracker.info(f"WARNING: export check failed: {metrics['export']}")
    run.accelerator.wait_for_everyone()
