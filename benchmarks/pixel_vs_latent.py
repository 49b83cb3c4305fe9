"""Diffusion on pixels against diffusion on f4 autoencoder latents at equal wall-clock (issue 5). Prints JSON.

The claim under test (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR
2022, Sec. 3 and Fig. 6): a compact latent space makes diffusion much cheaper. Both arms train the same UNet
(widths, levels, attention at the lowest level, batch, AdamW, noise schedule, label dropout) for the same
number of seconds on the same builtin:shapes images: one on 32x32x3 pixels in [-1, 1], one on the
autoencoder's 8x8x4 posterior means, scaled to unit variance. Each step's images, timesteps and label drops
come from one generator seeded by (seed, step), so both arms draw the same ones; only the diffusion noise
differs, in shape. The budget excludes encoding the dataset (the product trains on a precomputed latent
store); the encode time is reported next to it, with the latent throughput it would give if included.

Quality: an independent classifier (ldm_vae.metrics.classifier), trained here on the same real images,
scores class-balanced DDIM samples drawn with classifier-free guidance: the accuracy on the requested class,
and the Fréchet distance of its features to as many held-out images (with real vs real as the floor).

    python benchmarks/pixel_vs_latent.py [--autoencoder runs/demo/autoencoder/export] [--budget-seconds 240]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.config import DiffusionConfig, UNetConfig  # noqa: E402
from ldm_vae.data import SHAPE_KINDS, build_dataset, stack_items, train_held_out_split  # noqa: E402
from ldm_vae.errors import ConfigError  # noqa: E402
from ldm_vae.losses import diffusion_loss  # noqa: E402
from ldm_vae.metrics import SampleClassifier, accuracy, frechet_distance, train_classifier  # noqa: E402
from ldm_vae.models import build_noise_scheduler, build_unet, load_autoencoder  # noqa: E402
from ldm_vae.pipelines import LatentDiffusionPipeline  # noqa: E402
from ldm_vae.seeds import torch_generator  # noqa: E402

# The same UNet for both arms; only its in/out convolutions follow the data's channels. Three levels: 32, 16,
# 8 px on pixels and 8, 4, 2 on latents, self-attention at the lowest level of each.
UNET = UNetConfig(
    block_out_channels=[64, 128, 128], attention_levels=[False, False, True], layers_per_block=1
)
DIFFUSION = DiffusionConfig()  # SD's scaled-linear schedule, epsilon prediction, label dropout 0.1
FINAL_LOSS_STEPS = 50  # final_loss = mean over this many last steps
GRID_COLUMNS = 8  # samples per class in the PNG
MAKE_AUTOENCODER = (
    "make one with `make demo`, or `ldm-vae train-ae kl-tiny run_dir=runs/bench-ae` (~4 min on 2 cores) "
    "and pass --autoencoder runs/bench-ae/export"
)


def load_vae(folder: str) -> AutoencoderKL:
    """The trained f4 AutoencoderKL; a missing folder says how to make one."""
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"--autoencoder={folder!r}: no trained autoencoder there; {MAKE_AUTOENCODER}")
    return load_autoencoder(folder, "--autoencoder", kinds=("AutoencoderKL",))


@torch.no_grad()
def encode_means(vae: AutoencoderKL, images: Tensor, batch_size: int = 256) -> Tensor:
    """Posterior means (n, c, R/f, R/f) of images (n, 3, R, R)."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(batch_size)])


def train_arm(
    x0_all: Tensor, labels: Tensor, num_classes: int, args: argparse.Namespace
) -> tuple[UNet2DModel, DDPMScheduler, dict[str, float | int]]:
    """A fresh UNet trained on x0_all (n, c, h, w) for `args.budget_seconds`, its schedule and its stats."""
    torch.manual_seed(args.seed)  # the same init draws for both arms
    unet = build_unet(UNET, tuple(x0_all.shape[1:]), num_classes).train()
    scheduler = build_noise_scheduler(DIFFUSION)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < args.budget_seconds:
        generator = torch_generator(args.seed, "diffusion", len(losses))
        batch = torch.randint(len(x0_all), (args.batch_size,), generator=generator)
        timesteps = torch.randint(DIFFUSION.num_train_timesteps, (args.batch_size,), generator=generator)
        dropped = torch.rand(args.batch_size, generator=generator) < DIFFUSION.label_dropout
        class_labels = torch.where(dropped, num_classes, labels[batch])  # id num_classes = the null class
        x0 = x0_all[batch]  # (b, c, h, w)
        noise = torch.randn(x0.shape, generator=generator)  # drawn last: the one draw whose shape differs
        loss, _ = diffusion_loss(unet, scheduler, x0, noise, timesteps, class_labels, DIFFUSION.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    stats = {
        "steps": len(losses),
        "images_seen": len(losses) * args.batch_size,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # far below threads x train_seconds: the CPU was shared
        "train_images_per_sec": round(len(losses) * args.batch_size / seconds, 2),
        "final_loss": round(sum(losses[-FINAL_LOSS_STEPS:]) / len(losses[-FINAL_LOSS_STEPS:]), 4),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }
    return unet.eval(), scheduler, stats


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    vae: AutoencoderKL | None,
    labels: Tensor,
    args: argparse.Namespace,
) -> tuple[Tensor, float]:
    """DDIM samples (b, 3, R, R) in [-1, 1] of classes `labels` (b,), with guidance; and their seconds."""
    pipe = LatentDiffusionPipeline(vae=vae, unet=unet, scheduler=DDIMScheduler.from_config(scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    kwargs = {
        "class_labels": labels,
        "num_inference_steps": args.inference_steps,
        "guidance_scale": args.guidance_scale,
        "generator": torch.Generator().manual_seed(args.seed),
    }
    start = time.perf_counter()
    if vae is None:
        images = pipe.denoise(**kwargs).clamp(-1, 1)  # pixel space: the model space is the image
    else:
        images = pipe(**kwargs, output_type="pt").images * 2 - 1  # decoded in [0, 1]
    return images, time.perf_counter() - start


def first_of_each_class(images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """GRID_COLUMNS images of each class, class by class: (num_classes * GRID_COLUMNS, 3, R, R)."""
    return torch.cat([images[labels == k][:GRID_COLUMNS] for k in range(num_classes)])


def save_grids(panels: dict[str, Tensor], path: Path) -> None:
    """One panel per entry, one row per class; images in [-1, 1]."""
    fig = Figure(figsize=(3.2 * len(panels), 2.7), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (title, images) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True
    ):
        grid = make_grid((images + 1) / 2, nrow=GRID_COLUMNS, padding=1)  # (3, H, W) in [0, 1]
        ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.savefig(path, dpi=150)


def machine() -> dict[str, str | int | None]:
    """What the timings ran on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def run_arm(
    x0_all: Tensor,
    train_labels: Tensor,
    decoder: AutoencoderKL | None,
    classifier: SampleClassifier,
    reference: Tensor,
    sample_labels: Tensor,
    args: argparse.Namespace,
) -> tuple[dict[str, float | int], Tensor]:
    """Train on x0_all (n, c, h, w), sample `sample_labels` (decoded by `decoder`, None = pixels), score them.

    Quality: accuracy on the requested classes, and the Fréchet distance of the classifier's features to
    the `reference` features (n, d) of held-out images.
    """
    unet, scheduler, stats = train_arm(x0_all, train_labels, classifier.num_classes, args)
    images, sample_seconds = sample(unet, scheduler, decoder, sample_labels, args)  # (b, 3, R, R)
    with torch.no_grad():
        fake_features = classifier.features(images)  # (b, d)
    stats |= {
        "sample_seconds": round(sample_seconds, 1),
        "classifier_accuracy": round(accuracy(classifier, images, sample_labels), 4),
        "feature_frechet_distance": round(frechet_distance(reference, fake_features), 3),
    }
    print(json.dumps(stats), file=sys.stderr)  # progress: an arm takes minutes
    return stats, images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--autoencoder", default="runs/demo/autoencoder/export", help="trained f4 AutoencoderKL"
    )
    parser.add_argument("--budget-seconds", type=float, default=240.0, help="training wall-clock per arm")
    parser.add_argument("--images", type=int, default=8192, help="builtin:shapes training images")
    parser.add_argument("--held-out", type=int, default=512, help="held-out images (classifier test, FD)")
    parser.add_argument("--resolution-px", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate, constant, both arms")
    parser.add_argument("--samples-per-class", type=int, default=16)
    parser.add_argument("--inference-steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results-pixel-vs-latent.json")
    return parser


def settings(args: argparse.Namespace, latent_shape: list[int], scaling_factor: float) -> dict[str, object]:
    """The settings both arms shared, for the JSON."""
    return {
        "data": f"builtin:shapes {args.resolution_px} px",
        "train_images": args.images,
        "held_out_images": args.held_out,
        "autoencoder": args.autoencoder,
        "latent_shape": latent_shape,
        "downsampling_factor": args.resolution_px // latent_shape[-1],
        "latents": "posterior mean, encoded once; scaling_factor = 1/std over the training latents",
        "scaling_factor": round(scaling_factor, 5),
        "budget_seconds_per_arm": args.budget_seconds,
        "budget_includes_encode": False,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW lr {args.lr}, constant, no weight decay, no EMA",
        "unet": asdict(UNET),
        "diffusion": asdict(DIFFUSION),
        "sampler": f"DDIM (eta 0), {args.inference_steps} steps, guidance {args.guidance_scale}",
        "samples_per_arm": len(SHAPE_KINDS) * args.samples_per_class,
        "seed": args.seed,
    }


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    num_classes, total_start = len(SHAPE_KINDS), time.perf_counter()
    num_samples = num_classes * args.samples_per_class
    if args.held_out < 2 * num_samples:
        parser.exit(2, f"error: --held-out={args.held_out} must be >= {2 * num_samples} (2 x the samples)\n")
    try:
        vae = load_vae(args.autoencoder)
    except ConfigError as error:
        parser.exit(2, f"error: {error}\n")
    dataset = build_dataset("builtin:shapes", args.resolution_px, args.images + args.held_out, args.seed)

    # 1. The judge, trained on the training images; held-out features are the reference and the floor.
    train_indices, held_out_indices = train_held_out_split(dataset, args.held_out, args.seed)
    train_images, train_labels = stack_items(dataset, train_indices)
    held_out_images, held_out_labels = stack_items(dataset, held_out_indices)
    start = time.perf_counter()
    classifier = train_classifier(dataset, train_indices, num_classes, seed=args.seed)
    classifier_seconds = time.perf_counter() - start
    with torch.no_grad():
        real_features = classifier.features(held_out_images)  # (n, d)
    reference, floor_set = real_features[:num_samples], real_features[num_samples : 2 * num_samples]

    # 2. Latents of the training images, once, scaled to unit variance (z_model = z * scaling_factor).
    start = time.perf_counter()
    latents = encode_means(vae, train_images)  # (n, c, R/f, R/f)
    encode_seconds = time.perf_counter() - start
    scaling_factor = 1.0 / latents.std().item()
    vae.register_to_config(
        scaling_factor=scaling_factor, shift_factor=None, latents_mean=None, latents_std=None
    )

    # 3. Each arm: train for the budget, sample class by class, score.
    sample_labels = torch.arange(num_classes).repeat_interleave(args.samples_per_class)
    arms, panels = {}, {"real (held-out)": first_of_each_class(held_out_images, held_out_labels, num_classes)}
    for name, x0_all, decoder in (("pixel", train_images, None), ("latent", latents * scaling_factor, vae)):
        arms[name], images = run_arm(
            x0_all, train_labels, decoder, classifier, reference, sample_labels, args
        )
        title = f"{name}: {arms[name]['steps']} steps, accuracy {arms[name]['classifier_accuracy']:.2f}"
        panels[title] = first_of_each_class(images, sample_labels, num_classes)
    arms["latent"]["train_images_per_sec_including_encode"] = round(
        arms["latent"]["images_seen"] / (arms["latent"]["train_seconds"] + encode_seconds), 2
    )

    report = {
        "benchmark": "pixel_vs_latent",
        "machine": machine(),
        "settings": settings(args, list(latents.shape[1:]), scaling_factor),
        "classifier": {
            "train_seconds": round(classifier_seconds, 1),
            "held_out_accuracy": round(accuracy(classifier, held_out_images, held_out_labels), 4),
            "feature_dim": classifier.num_features,
        },
        "real_vs_real_frechet_distance": round(frechet_distance(reference, floor_set), 3),
        "encode_seconds": round(encode_seconds, 1),
        **arms,
        "latent_over_pixel_train_throughput": round(
            arms["latent"]["train_images_per_sec"] / arms["pixel"]["train_images_per_sec"], 1
        ),
        "total_seconds": round(time.perf_counter() - total_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    save_grids(panels, args.out.with_name("pixel_vs_latent.png"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
