"""The `ldm-vae` command: thin subcommands over the jobs in train/. Bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from ldm_vae.config import (
    AutoencoderTrainConfig,
    LDMTrainConfig,
    config_to_dict,
    load_config,
    validate_autoencoder_config,
    validate_ldm_config,
)
from ldm_vae.errors import ConfigError, TrainingDiverged
from train.demo import add_arguments as add_demo_arguments
from train.encode import add_arguments as add_encode_arguments
from train.evaluate import add_arguments as add_eval_arguments
from train.interpolate import add_arguments as add_interpolate_arguments
from train.sample import add_arguments as add_sample_arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldm-vae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_ae = commands.add_parser("train-ae", help="train a KL or VQ autoencoder, then export and report")
    train_ae.add_argument("config", help="a preset name from configs/ (e.g. kl-tiny) or a YAML file")
    train_ae.add_argument(
        "overrides", nargs="*", help="key=value, e.g. train.max_steps=1000 loss.kl_weight=1e-6"
    )
    train_ae.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    train_ldm = commands.add_parser("train-ldm", help="train a latent diffusion UNet on a latent store")
    train_ldm.add_argument("config", help="a preset name from configs/ (e.g. ldm-tiny) or a YAML file")
    train_ldm.add_argument(
        "overrides", nargs="*", help="key=value, e.g. data.latents=runs/latents train.max_steps=1000"
    )
    train_ldm.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")

    encode = commands.add_parser("encode", help="encode a dataset to sharded, checksummed latents")
    add_encode_arguments(encode)

    eval_ae = commands.add_parser(
        "eval-ae", help="reconstruction metrics (PSNR, SSIM, LPIPS, rFID, sharpness) and latent health"
    )
    add_eval_arguments(eval_ae)

    interpolate = commands.add_parser(
        "interpolate", help="latent interpolation strips, their smoothness, and prior samples"
    )
    add_interpolate_arguments(interpolate)

    sample = commands.add_parser("sample", help="a labelled sample grid from a saved pipeline")
    add_sample_arguments(sample)

    demo = commands.add_parser("demo", help="the whole chain on built-in data: VAE, encode, LDM, report")
    add_demo_arguments(demo)

    export = commands.add_parser(
        "export", help="export and report a training checkpoint as a diffusers folder"
    )
    export.add_argument("run_dir", help="the run folder (holds config.yaml and checkpoints/)")
    export.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder")
    return parser


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run_training_job(args: argparse.Namespace) -> None:
    """train-ae / train-ldm: resolve, validate and print the config (EDM2's habit), then train."""
    if args.command == "train-ae":
        from train.autoencoder import train

        cfg = load_config(AutoencoderTrainConfig, args.config, args.overrides)
        validate_autoencoder_config(cfg)
    else:
        from train.ldm import train

        cfg = load_config(LDMTrainConfig, args.config, args.overrides)
        validate_ldm_config(cfg)
    if _is_main_process():
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="", flush=True)
    if not args.dry_run:
        train(cfg)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("train-ae", "train-ldm"):
            run_training_job(args)
        elif args.command == "encode":
            from train.encode import encode, verify

            if args.verify:
                problems = verify(args.verify)
                for problem in problems:
                    print(f"ldm-vae: verify: {problem}", file=sys.stderr)
                print(f"{args.verify}: {'FAILED' if problems else 'OK'}")
                return 1 if problems else 0
            encode(args)
        elif args.command == "eval-ae":
            from train.evaluate import evaluate

            evaluate(args)
        elif args.command == "interpolate":
            from train.interpolate import interpolate

            interpolate(args)
        elif args.command == "sample":
            from train.sample import sample

            sample(args)
        elif args.command == "demo":
            from train.demo import demo

            demo(args)
        elif args.command == "export":
            from train.autoencoder import export_checkpoint

            export_checkpoint(args.run_dir, args.checkpoint)
    except ConfigError as error:
        print(f"ldm-vae: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"ldm-vae: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ldm-vae: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
