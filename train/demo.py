"""The whole chain in one command: `ldm-vae demo [--data SOURCE] [--run-dir runs/demo]`, or for
text-to-image `ldm-vae demo --text [--run-dir runs/demo-text]`.

1. `train-ae kl-tiny`: a KL-VAE (f4, 4 channels) on 32 px images, exported with its measured scale.
2. `encode`: the training images (not the held-out ones the figures use) to posterior moments, in
   checksummed shards with exact scaling statistics.
3. `train-ldm ldm-tiny`: a class-conditional UNet on those latents, saved as a diffusers pipeline.
4. Evaluation: a classifier trained here on the real images scores class-conditional samples (accuracy,
   and a Fréchet distance of its features against held-out real images), and, as their ceiling, the
   autoencoder's reconstructions of the held-out images.
5. `report.md`: every figure, the reconstruction grid and the sample grid by class.

`--text` runs the same chain on `builtin:shapes-text` (named colours; four colour-shape pairs never drawn)
with `train-ldm ldm-text-tiny`, a UNet cross-attending to a CLIP text encoder, saved as a stock
StableDiffusionPipeline; a judge with a shape head and a colour head then checks samples against their
prompts, for prompts of seen and of never-seen (held-out) pairs: compositional generalisation.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from ldm_vae.config import (
    AutoencoderTrainConfig,
    LDMTrainConfig,
    bounded_option,
    downsampling_factor,
    load_config,
)
from ldm_vae.data import build_dataset, train_held_out_split
from ldm_vae.data.shapes import HELD_OUT_COMBINATIONS, SHAPE_KINDS
from ldm_vae.errors import ConfigError
from ldm_vae.metrics.classifier import factor_hits
from ldm_vae.metrics.judge import (
    CLASSIFIER_STEPS,
    PROMPT_TEMPLATE,
    attribute_accuracy,
    is_unseen,
    judge_reconstructions,
    judge_split,
    pair_factors,
    pair_prompts,
    reconstruct,
    train_factor_judge,
    train_judge,
)
from ldm_vae.pipelines.sampling import load_pipeline, score_pipeline
from ldm_vae.pipelines.stable_diffusion import judge_prompts
from ldm_vae.training.demo_report import write_report, write_text_report
from ldm_vae.training.stages import run_stage
from ldm_vae.viz import save_class_grid

DEMO_AE_KEYS = ("run_dir",)  # set by the demo; data.source comes from --data
DEMO_LDM_KEYS = ("run_dir", "data.latents", "data.autoencoder")


@dataclass(frozen=True)
class DemoKind:
    """What the class and the text demo differ in; everything else is one chain."""

    ldm_preset: str  # train-ldm's preset (train-ae's is kl-tiny for both)
    data: str  # the data source of every stage
    run_dir: str  # default --run-dir
    conditioning: str  # what the LDM preset must condition on
    samples_per_row: int  # scored samples per class or per prompt
    scored_by: str  # for the one-line refusal of another conditioning


CLASS_DEMO = DemoKind("ldm-tiny", "builtin:shapes", "runs/demo", "class", 32, "class")
TEXT_DEMO = DemoKind("ldm-text-tiny", "builtin:shapes-text", "runs/demo-text", "text", 8, "prompt")
TEXT_GUIDANCE_SCALES = (1.0,)  # scored besides the preset's sample.guidance_scale
CLASS_GUIDANCE_SCALES = (1.0, 2.0, 3.0, 4.0)  # the class demo's sweep, besides the preset's scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text",
        action="store_true",
        help="text-to-image on builtin:shapes-text with ldm-text-tiny, scored prompt by prompt",
    )
    parser.add_argument(
        "--run-dir", help="everything goes here (stages in subfolders); default runs/demo, runs/demo-text"
    )
    parser.add_argument(
        "--data",
        help="labelled data for every stage: builtin:NAME or an image folder (default builtin:shapes)",
    )
    parser.add_argument(
        "--ae", action="append", default=[], metavar="KEY=VALUE", help="override for train-ae kl-tiny"
    )
    parser.add_argument(
        "--ldm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for train-ldm ldm-tiny (--text: ldm-text-tiny)",
    )
    parser.add_argument(
        "--samples-per-class",
        type=bounded_option(int, ge=2),
        help=f"samples scored per class (default {CLASS_DEMO.samples_per_row}) or, with --text, per "
        f"prompt (default {TEXT_DEMO.samples_per_row})",
    )
    parser.add_argument(
        "--classifier-steps",
        type=bounded_option(int, ge=1),
        default=CLASSIFIER_STEPS,
        help="training steps of the judging classifier",
    )


def demo_kind(args: argparse.Namespace) -> DemoKind:
    """The class or the text demo, with `args.data`, `args.run_dir` and `args.samples_per_class` filled in."""
    kind = TEXT_DEMO if args.text else CLASS_DEMO
    if args.text and args.data not in (None, kind.data):
        raise ConfigError(
            f"--data {args.data}: the text demo's judge checks the colour and shape each prompt names, which "
            f"only {kind.data} draws by name; drop --data"
        )
    args.data = args.data or kind.data
    args.run_dir = args.run_dir or kind.run_dir
    args.samples_per_class = args.samples_per_class or kind.samples_per_row
    return kind


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


def check_stages_agree(
    ae_cfg: AutoencoderTrainConfig, ldm_cfg: LDMTrainConfig, ae_dir: Path, kind: DemoKind
) -> int:
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
    if model.conditioning != kind.conditioning:
        raise ConfigError(
            f"--ldm model.conditioning={model.conditioning}: the demo scores samples by {kind.scored_by}"
        )
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
    train_indices, held_out = train_held_out_split(dataset, data.held_out_samples, ae_cfg.seed)
    try:  # the split the judge will make after training, made here so a too-small source fails first
        judge_split(train_indices, len(held_out), ae_cfg.seed)
    except ValueError as error:
        raise ConfigError(f"--data {data.source}: {error}") from None
    return len(dataset.classes)


def score_samples(
    run_dir: Path,
    ae_cfg: AutoencoderTrainConfig,
    ldm_cfg: LDMTrainConfig,
    per_class: int,
    classifier_steps: int,
) -> dict:
    """Class accuracy and classifier-feature Fréchet distance of the LDM's samples and of the autoencoder's
    held-out reconstructions (the samples' ceiling), against real images, across a guidance sweep."""
    classifier, real_features, figures = train_judge(ae_cfg, classifier_steps)
    pipe = load_pipeline(str(run_dir / "ldm" / "pipeline"))
    return {
        "classifier_real_held_out_accuracy": figures["classifier_real_held_out_accuracy"],
        "samples_per_class": per_class,
        "classifier_steps": classifier_steps,
        "real_vs_real_frechet": figures["real_vs_real_frechet"],
        "reconstructions": judge_reconstructions(classifier, real_features, ae_cfg, pipe.vae),
        **score_pipeline(
            pipe, classifier, real_features, ldm_cfg.sample, per_class, ae_cfg.seed + 1, CLASS_GUIDANCE_SCALES
        ),
    }


def showcase_pairs() -> list[tuple[str, str]]:
    """The (colour, shape) rows of the text demo's picture: every held-out pair, then as many seen pairs
    made of the same words (each held-out colour with the next held-out pair's shape)."""
    held = list(HELD_OUT_COMBINATIONS)
    return held + [(colour, held[(i + 1) % len(held)][1]) for i, (colour, _) in enumerate(held)]


def score_text_samples(
    run_dir: Path,
    ae_cfg: AutoencoderTrainConfig,
    ldm_cfg: LDMTrainConfig,
    per_prompt: int,
    classifier_steps: int,
) -> dict:
    """Attribute accuracy (shape, colour, both; seen and unseen pairs apart) of `per_prompt` samples for
    every colour-shape prompt, at guidance 1 and the preset's; of real images (the judge's own accuracy) and
    of their reconstructions by the demo's autoencoder (the samples' ceiling). Writes prompt_samples.png."""
    sample, seed = ldm_cfg.sample, ae_cfg.seed + 1
    classifier, real, real_factors, real_scores = train_factor_judge(
        ae_cfg.data.resolution_px, ae_cfg.seed, classifier_steps
    )
    pipe = load_pipeline(str(run_dir / "ldm" / "pipeline"), pipeline_class=StableDiffusionPipeline)
    reconstructed = factor_hits(classifier, reconstruct(pipe.vae, real), real_factors)
    prompts, wanted = pair_prompts()  # (p,) prompts, factors (p, 2)
    scores = {
        "prompt_template": PROMPT_TEMPLATE,
        "samples_per_prompt": per_prompt,
        "real": real_scores,
        "reconstructions": attribute_accuracy(reconstructed, real_factors),
    }
    for guidance in sorted({*TEXT_GUIDANCE_SCALES, sample.guidance_scale}):
        steps = sample.num_inference_steps
        grid, hits = judge_prompts(pipe, classifier, prompts, wanted, per_prompt, steps, guidance, seed)
        # grid (p, per_prompt, 3, R, R) in [0, 1], hits (p, per_prompt, 2)
        per_sample = wanted.repeat_interleave(per_prompt, dim=0)  # (p * per_prompt, 2)
        scores[f"guidance_{guidance:g}"] = attribute_accuracy(hits.flatten(0, 1), per_sample)
        if guidance == sample.guidance_scale:
            both = hits.all(dim=2).float().mean(dim=1).tolist()  # (p,)
            scores["both_by_prompt"] = dict(zip(prompts, both, strict=True))
            save_prompt_grid(grid, prompts, run_dir / "prompt_samples.png")
    return scores


def save_prompt_grid(grid: torch.Tensor, prompts: list[str], path: Path) -> None:
    """The rows of `showcase_pairs` from a grid (p, n, 3, R, R) of `pair_prompts`' prompts, labelled."""
    showcase = pair_factors(showcase_pairs())  # (rows, 2) = (shape, colour)
    rows = (showcase[:, 1] * len(SHAPE_KINDS) + showcase[:, 0]).tolist()  # pair_prompts is colour-major
    unseen = is_unseen(showcase).tolist()
    names = [prompts[r] + (" (unseen)" if held else "") for r, held in zip(rows, unseen, strict=True)]
    save_class_grid(grid[rows], path, names)


def demo(args: argparse.Namespace) -> Path:
    kind = demo_kind(args)
    run_dir = Path(args.run_dir)
    ae_dir, latents, ldm_dir = run_dir / "autoencoder", run_dir / "latents", run_dir / "ldm"
    refuse_stage_overrides(args)
    ae_overrides = [f"run_dir={ae_dir}", f"data.source={args.data}", *args.ae]
    ldm_overrides = [f"run_dir={ldm_dir}", f"data.latents={latents}", *args.ldm]
    ae_cfg = load_config(AutoencoderTrainConfig, "kl-tiny", ae_overrides)  # bad overrides fail here, early
    ldm_cfg = load_config(LDMTrainConfig, kind.ldm_preset, ldm_overrides)
    num_classes = check_stages_agree(ae_cfg, ldm_cfg, ae_dir, kind)
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
    encode_args += ["--hold-out", str(ae_cfg.data.held_out_samples)]  # the LDM never sees what is scored
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
        ["train-ldm", kind.ldm_preset, *ldm_overrides, "train.resume=latest"],
        commands,
        done=(ldm_dir / "report.json").is_file(),
    )
    print(
        "\n=== 4/4 scoring reconstructions and samples with a classifier trained on the real images",
        flush=True,
    )
    stage_start = time.perf_counter()
    score = score_text_samples if args.text else score_samples
    scores = score(run_dir, ae_cfg, ldm_cfg, args.samples_per_class, args.classifier_steps)
    seconds["scoring"] = time.perf_counter() - stage_start
    seconds["total"] = time.perf_counter() - start

    figures = {
        "machine": f"{torch.get_num_threads()} CPU threads"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "data": {"source": args.data, "resolution_px": ae_cfg.data.resolution_px, "classes": num_classes},
        "presets": {"autoencoder": "kl-tiny", "ldm": kind.ldm_preset},
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
    (write_text_report if args.text else write_report)(run_dir, figures, commands)
    print(f"\ndemo finished in {seconds['total'] / 60:.1f} min: {run_dir / 'report.md'}")
    return run_dir


def run(args: argparse.Namespace) -> int:
    demo(args)
    return 0
