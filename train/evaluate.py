"""Evaluate any diffusers autoencoder folder: `ldm-vae eval-ae --model DIR --data SPEC [--out DIR] [options]`.

Reconstructs `--samples` images of the data source (a `--seed`-ed random subset; default all) and writes
`eval.json` and `eval.md` to --out (default: `<model>-eval` beside the model folder, e.g.
`runs/kl/export-eval`). Fidelity: PSNR, SSIM, the bicubic floor at the latent size, sharpness (Laplacian
energy ratio), LPIPS-VGG and rFID; latent health: per-channel moments against the N(0, 1) prior after the
model's normalization (scaling/shift factor or per-channel mean/std), active channels, and KL per channel
(AutoencoderKL) or codebook usage (VQModel). LPIPS and rFID need pretrained weights from local files; when
a file is missing they are skipped, with the reason in both outputs, and everything else still runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import ModelMixin
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ldm_vae.config import add_image_data_options, bounded_option
from ldm_vae.data import IndexedImageDataset, build_dataset, read_skips, source_columns
from ldm_vae.errors import ConfigError
from ldm_vae.latents.writer import write_json_atomic
from ldm_vae.losses.perceptual import (
    HEADS_HINT,
    LPIPS,
    VGG16_HINT,
    _require_file,
    default_heads_path,
    default_vgg16_path,
)
from ldm_vae.metrics import active_channels, bicubic_baseline, kl_per_channel, psnr, sharpness, ssim
from ldm_vae.metrics.fid import FrechetDistance, default_inception_path, load_inception
from ldm_vae.metrics.latent import latent_moments
from ldm_vae.models import downsampling_factor_of, load_autoencoder
from ldm_vae.models.normalization import latent_shift_and_scale
from ldm_vae.models.quantizer import codebook_usage
from ldm_vae.training.autoencoder_report import PSNR_CAP_DB, encode_decode

LATENT_STATS_MAX_IMAGES = 4096  # latents kept for the moments and the active channels (memory bound)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_data_options(parser, builtin_samples=1024)
    parser.add_argument("--model", required=True, help="a diffusers AutoencoderKL or VQModel folder")
    parser.add_argument("--out", help="output folder; default: <model>-eval beside the model folder")
    parser.add_argument(
        "--samples",
        type=bounded_option(int, ge=2),
        default=None,
        help="evaluate N random images; default all",
    )
    parser.add_argument("--batch-size", type=bounded_option(int, ge=1), default=32)
    parser.add_argument(
        "--num-workers", type=bounded_option(int, ge=0), default=2, help="DataLoader workers decoding images"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of a builtin dataset and of the --samples subset"
    )
    parser.add_argument(
        "--inception", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); default: hub cache"
    )
    parser.add_argument("--lpips-vgg16", help="torchvision's vgg16-397923af.pth; default: hub cache")
    parser.add_argument("--lpips-heads", help="LPIPS v0.1 vgg.pth; default: from an installed lpips package")


def default_out_dir(model: str) -> Path:
    """`<model>-eval` beside the model folder: never inside it, so the diffusers folder stays clean."""
    path = Path(model).expanduser().resolve()
    return path.with_name(f"{path.name}-eval")


def load_weighted_metrics(
    args: argparse.Namespace, device: torch.device
) -> tuple[LPIPS | None, FrechetDistance | None, dict[str, str]]:
    """LPIPS and rFID where their weight files load; else None and the one-line reason under `skipped`."""
    skipped: dict[str, str] = {}
    lpips, fid = None, None
    try:
        vgg16_path = args.lpips_vgg16 or default_vgg16_path()
        heads_path = args.lpips_heads or default_heads_path() or ""
        _require_file(vgg16_path, "--lpips-vgg16 (needed by LPIPS)", VGG16_HINT)  # names our option, not
        _require_file(heads_path, "--lpips-heads (needed by LPIPS)", HEADS_HINT)  # the training config key
        lpips = LPIPS.from_files(vgg16_path, heads_path).to(device)
    except ConfigError as error:
        skipped["lpips"] = str(error)
    try:
        fid = FrechetDistance(load_inception(args.inception or default_inception_path()), device)
    except ConfigError as error:
        skipped["rfid"] = str(error)
    return lpips, fid, skipped


class LatentSummary:
    """Latent health over a pass: KL per channel (AutoencoderKL) or code usage (VQModel) over every image;
    moments against the N(0, 1) prior and active channels over the first LATENT_STATS_MAX_IMAGES."""

    def __init__(self) -> None:
        self.images = 0
        self.kept: dict[str, list[Tensor]] = {}  # "latents" (and "logvar") of the first images, on CPU
        self.kl_sum: Tensor | None = None  # (c,) fp64, sum over images of the per-image mean KL
        self.codes: list[Tensor] = []  # (b, n) int32 code indices (VQ)

    def update(self, latents: Tensor, extra: dict[str, Tensor]) -> None:
        """latents (b, c, h, w): posterior mean (KL, with extra["logvar"]) or pre-quantisation (VQ)."""
        b = len(latents)
        keep = min(b, LATENT_STATS_MAX_IMAGES - self.images)
        for key, value in (("latents", latents), ("logvar", extra.get("logvar"))):
            if keep > 0 and value is not None:
                self.kept.setdefault(key, []).append(value[:keep].float().cpu())
        if "logvar" in extra:
            kl = kl_per_channel(latents.float(), extra["logvar"].float()).double().cpu() * b  # (c,)
            self.kl_sum = kl if self.kl_sum is None else self.kl_sum + kl
        else:
            self.codes.append(extra["indices"].to(torch.int32).cpu())
        self.images += b

    def result(self, model: ModelMixin) -> dict[str, object]:
        latents = torch.cat(self.kept["latents"])  # (n, c, h, w)
        logvar = torch.cat(self.kept["logvar"]) if "logvar" in self.kept else None
        mean, std = latent_moments(latents, logvar)  # (c,) each, of the aggregate posterior
        shift, scale = (x.flatten() for x in latent_shift_and_scale(model))  # (c,) or (1,) each
        active, variances = active_channels(latents)
        summary = {
            "shape": list(latents.shape[1:]),
            "moments_images": len(latents),
            "mean_per_channel": mean.tolist(),
            "std_per_channel": std.tolist(),
            "normalization_shift": shift.tolist(),  # shift_factor, or latents_mean per channel
            "normalization_scale": scale.tolist(),  # scaling_factor, or 1 / latents_std per channel
            "scaled_mean_per_channel": ((mean - shift) * scale).tolist(),  # the prior: 0
            "scaled_std_per_channel": (std * scale).tolist(),  # the prior: 1
            "active_channels": active,
            "variance_per_channel": variances.tolist(),
        }
        if self.kl_sum is not None:
            summary["kl_per_channel"] = (self.kl_sum / self.images).tolist()  # nats per element
        else:
            summary["codebook"] = codebook_usage(torch.cat(self.codes), model.config.num_vq_embeddings)
        return summary


@torch.no_grad()
def measure(
    model: ModelMixin,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    lpips: LPIPS | None,
    fid: FrechetDistance | None,
) -> dict[str, object]:
    """One pass of encode -> decode over `dataset`: mean per-image scores, rFID and the latent summary."""
    device = next(model.parameters()).device
    factor = downsampling_factor_of(model)
    scores: dict[str, list[Tensor]] = {}
    latents_summary = LatentSummary()
    bar = tqdm(total=len(dataset), unit="img", desc="eval-ae")
    for images, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        images = images.to(device)  # (b, 3, h, w) in [-1, 1]
        reconstruction, latents, extra = encode_decode(model, images)
        reconstruction = reconstruction.float().clamp(-1, 1)
        per_image = {
            "psnr_db": psnr(reconstruction, images).clamp(max=PSNR_CAP_DB),
            "ssim": ssim(reconstruction, images),
            "sharpness": sharpness(reconstruction, images),
            "bicubic_psnr_db": psnr(bicubic_baseline(images, factor), images).clamp(max=PSNR_CAP_DB),
        }
        if lpips is not None:
            per_image["lpips"] = lpips(reconstruction, images)
        for key, value in per_image.items():
            scores.setdefault(key, []).append(value.float().cpu())
        if fid is not None:
            fid.update(images, real=True)
            fid.update(reconstruction, real=False)
        latents_summary.update(latents, extra)
        bar.update(len(images))
    bar.close()
    metrics: dict[str, object] = {key: torch.cat(values).mean().item() for key, values in scores.items()}
    if fid is not None:
        metrics["rfid"] = fid.compute()
        metrics["rfid_images"] = fid.counts[0]
    return {"metrics": metrics, "latents": latents_summary.result(model)}


def markdown_report(report: dict) -> str:
    """A short table of eval.json for people: one row a metric, skipped metrics listed with the reason."""
    metrics, latents = report["metrics"], report["latents"]
    rows = [
        ("PSNR", f"{metrics['psnr_db']:.2f} dB", f"per image, capped at {PSNR_CAP_DB:.0f} dB"),
        ("bicubic PSNR", f"{metrics['bicubic_psnr_db']:.2f} dB", "the floor: bicubic at the latent size"),
        ("SSIM", f"{metrics['ssim']:.4f}", "11x11 Gaussian window"),
        ("sharpness", f"{metrics['sharpness']:.3f}", "Laplacian energy ratio; 1 = as sharp, < 1 blurrier"),
    ]
    if "lpips" in metrics:
        rows.append(("LPIPS", f"{metrics['lpips']:.4f}", "VGG, v0.1; lower is better"))
    if "rfid" in metrics:
        note = f"{metrics['rfid_images']} images; biased upward at small counts, compare at equal counts"
        rows.append(("rFID", f"{metrics['rfid']:.3f}", note))
    channels = latents["shape"][0]
    rows += [
        (
            "active channels",
            f"{latents['active_channels']} / {channels}",
            "latent variance across images > 0.01",
        ),
        (
            "scaled latent std",
            ", ".join(f"{std:.3g}" for std in latents["scaled_std_per_channel"]),
            f"per channel, of (z - shift) * scale over {latents['moments_images']} images; the prior: 1",
        ),
        (
            "scaled latent mean",
            ", ".join(f"{mean:.3g}" for mean in latents["scaled_mean_per_channel"]),
            "per channel; the prior: 0",
        ),
    ]
    if "kl_per_channel" in latents:
        per_channel = ", ".join(f"{kl:.3g}" for kl in latents["kl_per_channel"])
        rows.append(("KL", f"{sum(latents['kl_per_channel']):.4g} nats", f"per channel: {per_channel}"))
    else:
        usage = latents["codebook"]
        rows.append(("codebook usage", f"{usage['usage']:.1%}", f"perplexity {usage['perplexity']:.1f}"))
    lines = [
        f"# eval-ae: {report['model']}",
        "",
        f"{report['class']} (f{report['downsampling_factor']}), data `{report['data']}` at "
        f"{report['resolution_px']} px, {report['images']} images",
        "",
        "| metric | value | note |",
        "| --- | --- | --- |",
        *(f"| {name} | {value} | {note} |" for name, value, note in rows),
    ]
    if report["skipped"]:
        lines += ["", "Skipped:", *(f"- {name}: {why}" for name, why in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def evaluate(args: argparse.Namespace) -> dict[str, object]:
    """Validate, load, measure, then write eval.json and eval.md; returns what eval.json holds."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_autoencoder(args.model, "--model").to(device)
    resolution = args.resolution or int(model.config.sample_size)
    factor = downsampling_factor_of(model)
    if resolution % factor:
        raise ConfigError(
            f"--resolution={resolution} must be divisible by the model's downsampling factor {factor}; "
            f"try {resolution - resolution % factor}"
        )
    dataset = build_dataset(args.data, resolution, args.builtin_samples, args.seed, **source_columns(args))
    count = min(args.samples or len(dataset), len(dataset))
    if count < 2:
        raise ConfigError(f"--data={args.data!r}: holds {len(dataset)} image(s); eval-ae needs at least 2")
    # A random subset: an image folder is listed class by class, so its first images would be few classes.
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))
    subset = Subset(dataset, sorted(order[:count].tolist()))
    out = Path(args.out) if args.out else default_out_dir(args.model)
    skip_log = out / "skipped.jsonl"  # samples replaced because they did not decode, in this evaluation
    skip_log.unlink(missing_ok=True)
    if isinstance(dataset, IndexedImageDataset):
        dataset.record_skips_to(skip_log)
    lpips, fid, skipped = load_weighted_metrics(args, device)

    report = {
        "model": str(args.model),
        "class": type(model).__name__,
        "downsampling_factor": factor,
        "data": args.data,
        "resolution_px": resolution,
        "images": count,
        **measure(model, subset, args.batch_size, args.num_workers, lpips, fid),
        "skipped": skipped,
        # left out when indexing, then replaced when read (named once each)
        "skipped_files": [list(item) for item in [*getattr(dataset, "skipped", []), *read_skips(skip_log)]],
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "eval.json", report)
    markdown = markdown_report(report)
    (out / "eval.md").write_text(markdown)
    print(markdown, end="")
    print(f"wrote eval.json and eval.md to {out}")
    return report


def run(args: argparse.Namespace) -> int:
    evaluate(args)
    return 0
