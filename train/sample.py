"""Sample a saved pipeline: `ldm-vae sample --pipeline DIR --out FILE.png [options]`.

Writes a grid with one labelled row per class (or 8 rows for an unconditional model). The pipeline's
scheduler can be swapped for DDPM, DDIM or DPM-Solver++ with the same training schedule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ldm_vae.config import bounded_option
from ldm_vae.data import build_dataset
from ldm_vae.errors import ConfigError
from ldm_vae.metrics.fid import default_inception_path, load_inception, sample_fid
from ldm_vae.models.unet import SAMPLERS
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.pipelines.sampling import load_pipeline, sample_by_class, with_scheduler
from ldm_vae.viz import save_class_grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", required=True, help="a folder saved by train-ldm (run_dir/pipeline)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--per-class", type=bounded_option(int, ge=1), default=8, help="images per row")
    parser.add_argument("--classes", default=None, help="comma-separated class names or ids; default all")
    parser.add_argument("--steps", type=bounded_option(int, ge=1), default=50, help="denoising steps")
    parser.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None, help="default: saved")
    parser.add_argument(
        "--guidance", type=bounded_option(float, ge=0), default=1.0, help="classifier-free guidance scale"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=bounded_option(int, ge=1), default=64)
    parser.add_argument(
        "--fid-data", default=None, help="also report FID of samples against this data source"
    )
    parser.add_argument(
        "--fid-samples",
        type=bounded_option(int, ge=2),
        default=1000,
        help="samples (and real images) for FID",
    )
    parser.add_argument(
        "--builtin-samples", type=bounded_option(int, ge=2), default=8192, help="size of a builtin --fid-data"
    )
    parser.add_argument(
        "--inception", default=None, help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)"
    )


def sample(args: argparse.Namespace) -> Path:
    pipe = load_pipeline(args.pipeline)
    if args.scheduler:
        with_scheduler(pipe, args.scheduler)
    names = pipe.config.class_names
    class_ids = None
    if args.classes:
        if pipe.unet.config.num_class_embeds is None:
            raise ConfigError(f"--classes={args.classes!r}: this pipeline is unconditional")
        try:  # the pipeline's own check (it loads without ldm-vae, so it raises ValueError)
            class_ids = [
                pipe.class_id(int(c) if c.strip().isdigit() else c.strip()) for c in args.classes.split(",")
            ]
        except ValueError as error:
            raise ConfigError(f"--classes={args.classes!r}: {error}") from None
    images = sample_by_class(
        pipe, args.per_class, args.steps, args.guidance, args.seed, class_ids, args.batch_size
    )
    rows = class_ids if class_ids is not None else range(len(images))
    row_names = [names[i] if names else str(i) for i in rows] if pipe.unet.config.num_class_embeds else None
    save_class_grid(images, args.out, row_names)
    print(f"{len(images) * args.per_class} samples in {len(images)} rows -> {args.out}")
    if args.fid_data:
        report_fid(pipe, args)
    return Path(args.out)


def report_fid(pipe: LatentDiffusionPipeline, args: argparse.Namespace) -> dict[str, float | int]:
    """FID of `--fid-samples` samples against as many `--fid-data` images, into `<out>.fid.json`."""
    extractor = load_inception(args.inception or default_inception_path(), "--inception", "sample FID")
    resolution = pipe.vae.config.sample_size if pipe.vae is not None else pipe.unet.config.sample_size
    dataset = build_dataset(args.fid_data, int(resolution), args.builtin_samples, args.seed)
    result = sample_fid(
        pipe,
        dataset,
        args.fid_samples,
        args.batch_size,
        extractor,
        torch.Generator(pipe.device).manual_seed(args.seed),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )
    out = Path(args.out).with_suffix(".fid.json")
    out.write_text(json.dumps({"data": args.fid_data, **result}, indent=2))
    print(f"FID {result['fid']:.2f} over {result['generated_samples']} samples vs {args.fid_data} -> {out}")
    return result


def run(args: argparse.Namespace) -> int:
    sample(args)
    return 0
