"""The `ldm-vae` command: thin subcommands over the jobs in ldm_vae.train. Bad input exits 2 with one line.

Only the chosen subcommand's module is imported, so `ldm-vae --help` and a config error print at once,
without loading torch or diffusers first.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import yaml

from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, config_to_dict, load_config
from ldm_vae.errors import ConfigError, TrainingDiverged

# subcommand -> (module in ldm_vae.train that defines `add_arguments` and runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train-ae": ("autoencoder", "train a KL or VQ autoencoder, then export and report"),
    "encode": ("encode", "encode a dataset to sharded, checksummed latents"),
    "train-ldm": ("ldm", "train a latent diffusion UNet on a latent store"),
    "sample": ("sample", "a labelled sample grid from a saved pipeline"),
    "eval-ae": ("evaluate", "reconstruction metrics (PSNR, SSIM, LPIPS, rFID, sharpness) and latent health"),
    "interpolate": ("interpolate", "latent interpolation strips, their smoothness, and prior samples"),
    "export": ("", "export a training checkpoint (train-ae or train-ldm run) as a diffusers folder"),
    "demo": ("demo", "the whole chain on built-in data: VAE, encode, LDM, report"),
    "check-data": ("check_data", "decode every sample of a source and name the unreadable ones"),
    "pack": ("pack", "pack an image folder into WebDataset tar shards"),
}
TRAINING_JOBS = {"train-ae": AutoencoderTrainConfig, "train-ldm": LDMTrainConfig}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a ConfigError: one line and exit code 2, like every other error."""

    def error(self, message: str) -> None:
        raise ConfigError(message)


def add_training_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("config", help="a preset name from configs/ or a YAML file")
    parser.add_argument("overrides", nargs="*", help=f"key=value, e.g. {example}")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run folder (holds config.yaml and checkpoints/)")
    parser.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint folder")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """Every subcommand with its help; only `command`'s arguments are added (importing its module)."""
    parser = OneLineParser(prog="ldm-vae", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        if name == "train-ae":
            add_training_arguments(sub, "train.max_steps=1000 loss.kl_weight=1e-6")
        elif name == "train-ldm":
            add_training_arguments(sub, "data.latents=runs/latents train.max_steps=1000")
        elif name == "export":
            add_export_arguments(sub)
        else:
            importlib.import_module(f"ldm_vae.train.{module}").add_arguments(sub)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is one), before any parsing."""
    return next((word for word in argv if word in COMMANDS), None)


def run_training_job(args: argparse.Namespace) -> None:
    """train-ae / train-ldm: resolve and validate the config, print it (EDM2's habit), then train."""
    cfg = load_config(TRAINING_JOBS[args.command], args.config, args.overrides)
    if os.environ.get("RANK", "0") == "0":
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="", flush=True)
    if not args.dry_run:
        job = importlib.import_module(f"ldm_vae.train.{COMMANDS[args.command][0]}")
        job.train(cfg)


def export_run(run_dir: str, checkpoint: str) -> dict[str, object]:
    """`ldm-vae export RUN_DIR`: the run's kind is read from its config.yaml (an LDM run has data.latents)."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"run_dir={run_dir!r}: no config.yaml; is this a train-ae or train-ldm run folder?")
    saved = yaml.safe_load(config_path.read_text()) or {}
    command = "train-ldm" if "latents" in saved.get("data", {}) else "train-ae"
    overrides = [f"run_dir={run_dir}", f"train.resume={checkpoint}"]
    cfg = load_config(TRAINING_JOBS[command], str(config_path), overrides)

    from ldm_vae.training.checkpoints import resolve_resume

    if resolve_resume(Path(run_dir), checkpoint) is None:
        raise ConfigError(f"--checkpoint={checkpoint!r}: {run_dir}/checkpoints holds no checkpoint")
    job = importlib.import_module(f"ldm_vae.train.{COMMANDS[command][0]}")
    return job.export_checkpoint(cfg)


def run_command(args: argparse.Namespace) -> int:
    if args.command in TRAINING_JOBS:
        run_training_job(args)
    elif args.command == "export":
        export_run(args.run_dir, args.checkpoint)
    else:
        return importlib.import_module(f"ldm_vae.train.{COMMANDS[args.command][0]}").run(args) or 0
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run_command(build_parser(chosen_command(argv)).parse_args(argv))
    except ConfigError as error:
        print(f"ldm-vae: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"ldm-vae: training diverged: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ldm-vae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
