"""The whole chain in one command: `ldm-vae demo [--data SOURCE] [--run-dir runs/demo]`.

1. `train-ae kl-tiny`: a KL-VAE (f4, 4 channels) on 32 px images, exported with its measured scale.
2. `encode`: every image to posterior moments, in checksummed shards with exact scaling statistics.
3. `train-ldm ldm-tiny`: a class-conditional UNet on those latents, saved as a diffusers pipeline.
4. Evaluation: a classifier trained here on the real images scores class-conditional samples (accuracy,
   and a Fréchet distance of its features against held-out real images), and, as their ceiling, the
   autoencoder's reconstructions of the held-out images.
5. `report.md`: every figure, the reconstruction grid and the sample grid by class.

The data (`--data`, default the built-in shapes; any labelled source `train-ae` reads) is named once and
used by every stage. Overrides that would make the stages disagree (a second data source, moved stage
folders, latents of another size) are refused before any work.

Each stage runs as its own `ldm-vae` process (the commands are printed, so any stage can be rerun by
hand). A finished stage is skipped on a rerun and an interrupted training stage resumes from its last
checkpoint, so running the demo again after Ctrl-C picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ldm_vae.config import (
    AutoencoderTrainConfig,
    LDMTrainConfig,
    bounded_option,
    downsampling_factor,
    load_config,
)
from ldm_vae.data import build_dataset
from ldm_vae.errors import ConfigError
from ldm_vae.metrics.judge import CLASSIFIER_STEPS, judge_reconstructions, train_judge
from ldm_vae.pipelines.sampling import load_pipeline, score_pipeline
from ldm_vae.training.stages import run_stage

SAMPLES_PER_CLASS = 32  # class-conditional samples scored per class
DEMO_AE_KEYS = ("run_dir",)  # set by the demo; data.source comes from --data
DEMO_LDM_KEYS = ("run_dir", "data.latents", "data.autoencoder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="runs/demo", help="everything goes here (stages in subfolders)")
    parser.add_argument(
        "--data",
        default="builtin:shapes",
        help="labelled data for every stage: builtin:NAME or an image folder",
    )
    parser.add_argument(
        "--ae", action="append", default=[], metavar="KEY=VALUE", help="override for train-ae kl-tiny"
    )
    parser.add_argument(
        "--ldm", action="append", default=[], metavar="KEY=VALUE", help="override for train-ldm ldm-tiny"
    )
    parser.add_argument(
        "--samples-per-class",
        type=bounded_option(int, ge=2),
        default=SAMPLES_PER_CLASS,
        help="samples scored per class",
    )
    parser.add_argument(
        "--classifier-steps",
        type=bounded_option(int, ge=1),
        default=CLASSIFIER_STEPS,
        help="training steps of the judging classifier",
    )


def refuse_stage_overrides(args: argparse.Namespace) -> None:
    """The demo places every stage and names the data once: an override of those is refused, not ignored."""
    for flag, overrides, keys in (("--ae", args.ae, DEMO_AE_KEYS), ("--ldm", args.ldm, DEMO_LDM_KEYS)):
        for item in overrides:
            key, _, value = item.partition("=")
            if key == "data.source":
                raise ConfigError(
                    f"{flag} {item}: the demo's data is --data (now {args.data!r}); use --data {value}"
                )
            if key in keys:
                raise ConfigError(f"{flag} {item}: the demo sets {key} itself (stages live under --run-dir)")


def check_stages_agree(ae_cfg: AutoencoderTrainConfig, ldm_cfg: LDMTrainConfig, ae_dir: Path) -> int:
    """Refuse, before any work, a chain whose stages cannot fit together; returns the data's class count."""
    data, model = ae_cfg.data, ldm_cfg.model
    side = data.resolution_px // downsampling_factor(ae_cfg.model)  # latent height = width
    if model.latent_channels not in (None, ae_cfg.model.latent_channels):
        raise ConfigError(
            f"--ldm model.latent_channels={model.latent_channels}: the demo's autoencoder makes "
            f"{ae_cfg.model.latent_channels} (--ae model.latent_channels)"
        )
    if model.latent_size not in (None, side):
        raise ConfigError(
            f"--ldm model.latent_size={model.latent_size}: the demo's latents are {side}x{side}"
        )
    if side % 2 ** (len(model.block_out_channels) - 1):
        raise ConfigError(
            f"--ldm model.block_out_channels={model.block_out_channels}: {len(model.block_out_channels)} "
            f"levels do not divide the {side}x{side} latents; use fewer levels"
        )
    if model.conditioning != "class":
        raise ConfigError(f"--ldm model.conditioning={model.conditioning}: the demo scores samples by class")
    saved = ae_dir / "config.yaml"  # a rerun continues the same data; it must not mix two sources
    if saved.is_file():
        before = load_config(AutoencoderTrainConfig, str(saved)).data
        for key in ("source", "resolution_px", "builtin_samples"):
            if getattr(before, key) != getattr(data, key):
                raise ConfigError(
                    f"{ae_dir} was trained with data.{key}={getattr(before, key)!r}, not "
                    f"{getattr(data, key)!r}: use another --run-dir"
                )
    dataset = build_dataset(data.source, data.resolution_px, data.builtin_samples, ae_cfg.seed)
    if len(dataset.classes) < 2:
        raise ConfigError(
            f"--data {data.source}: {len(dataset.classes)} class; the demo needs class sub-folders"
        )
    return len(dataset.classes)


def score_samples(
    run_dir: Path,
    ae_cfg: AutoencoderTrainConfig,
    ldm_cfg: LDMTrainConfig,
    per_class: int,
    classifier_steps: int,
) -> dict:
    """Class accuracy and classifier-feature Fréchet distance of the LDM's samples and of the autoencoder's
    held-out reconstructions (the samples' ceiling), against real images."""
    classifier, real_features, figures = train_judge(ae_cfg, classifier_steps)
    pipe = load_pipeline(str(run_dir / "ldm" / "pipeline"))
    return {
        "classifier_real_held_out_accuracy": figures["classifier_real_held_out_accuracy"],
        "samples_per_class": per_class,
        "real_vs_real_frechet": figures["real_vs_real_frechet"],
        "reconstructions": judge_reconstructions(classifier, real_features, ae_cfg, pipe.vae),
        **score_pipeline(pipe, classifier, real_features, ldm_cfg.sample, per_class, seed=ae_cfg.seed + 1),
    }


def write_report(run_dir: Path, figures: dict, commands: list[str]) -> None:
    ae, encode, ldm, scores = figures["autoencoder"], figures["encode"], figures["ldm"], figures["samples"]
    held = ae["held_out"]
    guided = [key for key in scores if key.startswith("guidance_")]
    lines = [
        "# ldm-vae demo report",
        "",
        f"Data `{figures['data']['source']}`: {figures['data']['resolution_px']} px, "
        f"{figures['data']['classes']} classes; {figures['machine']}. "
        f"Total wall time {figures['seconds']['total'] / 60:.1f} min.",
        "",
        "| stage | figure | value |",
        "|---|---|---|",
        f"| autoencoder (kl-tiny, f4, {held['latent_shape']}) | held-out PSNR / bicubic floor | "
        f"{held['psnr_db']:.2f} dB / {held['bicubic_psnr_db']:.2f} dB |",
        f"| | held-out SSIM | {held['ssim']:.3f} |",
        f"| | active latent channels | {held['active_channels']} of {held['latent_shape'][0]} |",
        f"| | export reloads bit-identical | {ae['export']['outputs_bit_identical']} |",
        f"| encode | latents, scaling_factor (exact moments) | {encode['num_samples']}, "
        f"{encode['scaling']['scaling_factor']:.4f} |",
        f"| latent diffusion (ldm-tiny) | steps, final loss | {ldm['step']}, {ldm['final_loss']:.4f} |",
        f"| | UNet parameters | {ldm['unet_parameters'] / 1e6:.2f} M |",
        f"| | saved pipeline samples identically | {ldm['reload_max_abs_diff'] == 0} |",
        f"| samples | classifier accuracy on real held-out images | "
        f"{scores['classifier_real_held_out_accuracy']:.3f} |",
        "| | autoencoder reconstructions of them (the ceiling): class accuracy / feature Fréchet distance | "
        f"{scores['reconstructions']['accuracy']:.3f} / {scores['reconstructions']['frechet_vs_real']:.2f} |",
        *(
            f"| | guidance {key.removeprefix('guidance_')}: class accuracy / feature Fréchet distance | "
            f"{scores[key]['accuracy']:.3f} / {scores[key]['frechet_vs_real']:.2f} |"
            for key in guided
        ),
        f"| | feature Fréchet distance, real vs real (floor) | {scores['real_vs_real_frechet']:.2f} |",
        "",
        "Wall time per stage (s): "
        + ", ".join(
            f"{name} {'(earlier run)' if value is None else f'{value:.0f}'}"
            for name, value in figures["seconds"].items()
        ),
        "",
        "## Reconstructions (originals above, EMA reconstructions below)",
        "",
        "![reconstructions](autoencoder/reconstructions.png)",
        "",
        "## Samples by class",
        "",
        "![samples](ldm/samples.png)",
        "",
        "## Loss curves",
        "",
        "![autoencoder](autoencoder/loss_curves.png) ![ldm](ldm/loss_curves.png)",
        "",
        "## Commands",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    (run_dir / "report.md").write_text("\n".join(lines))


def demo(args: argparse.Namespace) -> Path:
    run_dir = Path(args.run_dir)
    ae_dir, latents, ldm_dir = run_dir / "autoencoder", run_dir / "latents", run_dir / "ldm"
    refuse_stage_overrides(args)
    ae_overrides = [f"run_dir={ae_dir}", f"data.source={args.data}", *args.ae]
    ldm_overrides = [f"run_dir={ldm_dir}", f"data.latents={latents}", *args.ldm]
    ae_cfg = load_config(AutoencoderTrainConfig, "kl-tiny", ae_overrides)  # bad overrides fail here, early
    ldm_cfg = load_config(LDMTrainConfig, "ldm-tiny", ldm_overrides)
    num_classes = check_stages_agree(ae_cfg, ldm_cfg, ae_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    commands: list[str] = []
    seconds: dict[str, float | None] = {}  # None: finished by an earlier run
    start = time.perf_counter()
    seconds["autoencoder"] = run_stage(
        "1/4 autoencoder",
        ["train-ae", "kl-tiny", *ae_overrides, "train.resume=latest"],
        commands,
        done=(ae_dir / "metrics.json").is_file(),
    )
    encode_args = ["encode", "--model", str(ae_dir / "export"), "--data", args.data, "--out", str(latents)]
    encode_args += ["--builtin-samples", str(ae_cfg.data.builtin_samples), "--seed", str(ae_cfg.seed)]
    encode_args += [
        "--resolution",
        str(ae_cfg.data.resolution_px),
        "--num-workers",
        str(ae_cfg.data.num_workers),
    ]
    seconds["encode"] = run_stage(
        "2/4 encode", encode_args, commands
    )  # a finished store verifies and returns
    seconds["latent diffusion"] = run_stage(
        "3/4 latent diffusion",
        ["train-ldm", "ldm-tiny", *ldm_overrides, "train.resume=latest"],
        commands,
        done=(ldm_dir / "report.json").is_file(),
    )
    print(
        "\n=== 4/4 scoring reconstructions and samples with a classifier trained on the real images",
        flush=True,
    )
    stage_start = time.perf_counter()
    scores = score_samples(run_dir, ae_cfg, ldm_cfg, args.samples_per_class, args.classifier_steps)
    seconds["scoring"] = time.perf_counter() - stage_start
    seconds["total"] = time.perf_counter() - start

    figures = {
        "machine": f"{torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "data": {"source": args.data, "resolution_px": ae_cfg.data.resolution_px, "classes": num_classes},
        "autoencoder": json.loads((ae_dir / "metrics.json").read_text()),
        "encode": {
            key: value
            for key, value in json.loads((latents / "manifest.json").read_text()).items()
            if key in ("num_samples", "latent_shape", "scaling", "timing")
        },
        "ldm": json.loads((ldm_dir / "report.json").read_text()),
        "samples": scores,
        "seconds": seconds,
    }
    (run_dir / "demo.json").write_text(json.dumps(figures, indent=2))
    write_report(run_dir, figures, commands)
    print(f"\ndemo finished in {seconds['total'] / 60:.1f} min: {run_dir / 'report.md'}")
    return run_dir


def run(args: argparse.Namespace) -> int:
    demo(args)
    return 0
