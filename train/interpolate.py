"""Latent interpolation strips and prior samples: `ldm-vae interpolate --model DIR --data SPEC --out DIR`.

Encodes --pairs image pairs drawn from --data by --seed and decodes --frames points on the path between each
pair's latents (lerp, slerp or both). Writes `interpolation_{method}.png` (one strip per pair, a row each),
`interpolation.json` (per method the mean and variance of the step between neighbouring frames: small, even
steps mean a smooth latent space; a jump shows as a large variance) and, with --prior N, `prior_samples.png`
(KL models only). Steps are LPIPS-VGG distances when --lpips-vgg16 and --lpips-heads are given, pixel RMS
otherwise; the JSON and the summary line name the one used. All is computed before the first file is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import ModelMixin
from torchvision.utils import save_image

from ldm_vae.config import add_image_data_options, bounded_option
from ldm_vae.data import build_dataset, source_columns
from ldm_vae.errors import ConfigError
from ldm_vae.latents.writer import encode_batch
from ldm_vae.losses import LPIPS
from ldm_vae.metrics.latent import latent_moments
from ldm_vae.models import downsampling_factor_of, load_autoencoder
from ldm_vae.models.normalization import latent_shift_and_scale
from ldm_vae.viz.interpolate import METHODS, Distance, interpolate_pair, path_smoothness, pixel_rms
from ldm_vae.viz.prior import prior_samples

STEP_FIGURES = ("mean_step", "step_variance")  # per strip, averaged over the pairs in the summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_data_options(parser, builtin_samples=8192)
    parser.add_argument("--model", help="a diffusers AutoencoderKL or VQModel folder")
    parser.add_argument("--out", help="output folder (created if missing; earlier outputs are replaced)")
    parser.add_argument(
        "--pairs", type=bounded_option(int, ge=1), default=8, help="image pairs, one strip each"
    )
    parser.add_argument(
        "--frames",
        type=bounded_option(int, ge=3),
        default=9,
        help="frames per strip, both ends included (>= 3)",
    )
    parser.add_argument("--method", choices=[*METHODS, "both"], default="both", help="path between latents")
    parser.add_argument("--seed", type=int, default=0, help="picks the pairs; seeds builtin data and --prior")
    parser.add_argument("--lpips-vgg16", help="torchvision VGG16 weights file: measure steps with LPIPS")
    parser.add_argument("--lpips-heads", help="LPIPS v0.1 vgg.pth heads file (with --lpips-vgg16)")
    parser.add_argument(
        "--prior",
        type=bounded_option(int, ge=0),
        default=0,
        metavar="N",
        help="also decode N prior samples (KL)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    for name in ("model", "out"):
        if not getattr(args, name):
            raise ConfigError(f"--{name} is required")
    if bool(args.lpips_vgg16) != bool(args.lpips_heads):
        raise ConfigError("--lpips-vgg16 and --lpips-heads go together: give both files or neither")
    for option, path in (("--lpips-vgg16", args.lpips_vgg16), ("--lpips-heads", args.lpips_heads)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{option}={path!r}: file not found")


def build_distance(args: argparse.Namespace, device: torch.device) -> tuple[str, Distance]:
    """(name, distance): LPIPS-VGG from the given files, else the weight-free pixel RMS."""
    if not args.lpips_vgg16:
        return "pixel-rms", pixel_rms
    return "lpips-vgg", LPIPS.from_files(args.lpips_vgg16, args.lpips_heads).to(device)


def resolution_of(args: argparse.Namespace, vae: ModelMixin) -> int:
    """--resolution, by default the model's sample_size; it must divide by the downsampling factor."""
    resolution = args.resolution or int(vae.config.sample_size)
    factor = downsampling_factor_of(vae)
    if resolution % factor:
        raise ConfigError(
            f"--resolution={resolution} must be divisible by the model's downsampling factor {factor}; "
            f"try {resolution - resolution % factor or factor}"
        )
    return resolution


def choose_pairs(num_images: int, pairs: int, seed: int) -> list[list[int]]:
    """`pairs` disjoint [a, b] dataset indices, a pure function of the seed."""
    if num_images < 2 * pairs:
        raise ConfigError(f"--pairs={pairs} needs {2 * pairs} images; --data holds {num_images}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))[: 2 * pairs]
    return order.view(pairs, 2).tolist()


def strips_and_smoothness(
    vae: ModelMixin,
    images: list[tuple[torch.Tensor, torch.Tensor]],
    frames: int,
    method: str,
    distance: Distance,
) -> tuple[list[torch.Tensor], dict]:
    """A strip (frames, 3, H, W) per image pair, and the step figures: per pair and averaged over pairs."""
    strips = [interpolate_pair(vae, a, b, frames, method) for a, b in images]
    per_pair = [path_smoothness(strip, distance) for strip in strips]
    figures = {key: sum(p[key] for p in per_pair) / len(per_pair) for key in STEP_FIGURES}
    return strips, {**figures, "per_pair": per_pair}


def prior_space_moments(vae: ModelMixin, images: torch.Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std of the latents of images (n, 3, H, W) after (z - shift) * scale.

    A latent space that matches the N(0, I) prior the diffusion model starts from gives 0 and 1 everywhere.
    """
    encoded = encode_batch(vae, images)
    latents = encoded["mean"] if "mean" in encoded else encoded["latents"]  # (n, c, h, w): KL or VQ
    mean, std = latent_moments(latents, encoded.get("logvar"))  # (c,) each
    shift, scale = (x.flatten().to(mean) for x in latent_shift_and_scale(vae))  # (c,) or (1,)
    return {"mean": ((mean - shift) * scale).tolist(), "std": (std * scale).tolist()}


@torch.no_grad()
def interpolate(args: argparse.Namespace) -> Path:
    check_arguments(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae = load_autoencoder(args.model, "--model").to(device)
    resolution = resolution_of(args, vae)
    distance_name, distance = build_distance(args, device)
    dataset = build_dataset(args.data, resolution, args.builtin_samples, args.seed, **source_columns(args))
    pairs = choose_pairs(len(dataset), args.pairs, args.seed)
    images = [(dataset[a][0], dataset[b][0]) for a, b in pairs]  # (3, H, W) in [-1, 1] each
    samples = None
    if args.prior:
        try:
            samples = prior_samples(vae, args.prior, torch.Generator().manual_seed(args.seed), resolution)
        except ConfigError as error:
            raise ConfigError(f"--prior={args.prior}: {error}; drop --prior") from None

    strips, smoothness = {}, {}
    for method in METHODS if args.method == "both" else (args.method,):
        strips[method], smoothness[method] = strips_and_smoothness(vae, images, args.frames, method, distance)
    endpoints = torch.stack([image for pair in images for image in pair]).to(device)  # (2 * pairs, 3, H, W)
    report = {
        "model": str(args.model),
        "data": args.data,
        "resolution_px": resolution,
        "seed": args.seed,
        "pairs": pairs,
        "frames": args.frames,
        "distance": distance_name,
        "methods": smoothness,
        "latent_moments_prior_space": prior_space_moments(vae, endpoints),
        "prior_samples": args.prior,
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method, method_strips in strips.items():  # a row per pair, (frames, 3, H, W) each
        path = out / f"interpolation_{method}.png"
        save_image(torch.cat(method_strips), path, nrow=args.frames, normalize=True, value_range=(-1, 1))
    if samples is not None:
        save_image(samples, out / "prior_samples.png", normalize=True, value_range=(-1, 1))
    (out / "interpolation.json").write_text(json.dumps(report, indent=2) + "\n")
    steps = ", ".join(
        f"{m} {s['mean_step']:.4f} (variance {s['step_variance']:.2e})" for m, s in smoothness.items()
    )
    prior = f"; {args.prior} prior samples" if args.prior else ""
    print(f"{len(pairs)} pairs x {args.frames} frames, mean {distance_name} step: {steps}{prior} -> {out}")
    return out


def run(args: argparse.Namespace) -> int:
    interpolate(args)
    return 0
