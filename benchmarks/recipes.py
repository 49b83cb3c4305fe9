"""Where class identity is lost on builtin:shapes, and which recipe brings it back (issue 14).

A judging classifier trained on real images (the demo's) scores, for each autoencoder arm, its
reconstructions of the held-out images (the ceiling of anything decoded by it), and for each latent
diffusion arm, its class-conditional samples across a guidance sweep (class accuracy and feature Fréchet
distance to real images). Bicubic thumbnails at 4, 8 and 16 px tell what a latent grid of that size can
carry without learning anything. Arms differ from the demo's `kl-tiny` / `ldm-tiny` in one lever each,
at the same seed; training time per arm is measured and reported next to its figures.

Every stage is an `ldm-vae` child process (printed, so any can be rerun by hand) or an in-process score
cached in its arm's folder: a rerun skips what is done and resumes an interrupted training from its last
checkpoint (Ctrl-C checkpoints), so the study can be run in short pieces.

    python benchmarks/recipes.py [--out runs/recipes] [--arms NAME ...] [--quick]

Writes benchmarks/results-recipes.json, recipes.md and recipes_guidance.png (into --out with --quick); arms
run earlier against the same judge stay in the report, so `--arms` calls add up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, load_config  # noqa: E402
from ldm_vae.data import stack_items  # noqa: E402
from ldm_vae.errors import ConfigError  # noqa: E402
from ldm_vae.metrics.classifier import judge, load_classifier, save_classifier  # noqa: E402
from ldm_vae.metrics.judge import CLASSIFIER_STEPS, judge_data, judge_reconstructions, train_judge  # noqa: E402
from ldm_vae.models import load_autoencoder  # noqa: E402
from ldm_vae.pipelines.sampling import load_pipeline, sample_by_class, score_pipeline, with_scheduler  # noqa: E402
from ldm_vae.training.stages import run_stage  # noqa: E402
from ldm_vae.training.tracking import read_stats  # noqa: E402
from ldm_vae.viz import save_guidance_curves  # noqa: E402

BENCHMARKS = REPO / "benchmarks"
THUMBNAIL_SIDES = (4, 8, 16)  # bicubic down and up again: what a grid of that size keeps of a 32 px image
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 4.0)  # classifier-free guidance sweep of every LDM arm
SAMPLERS = (("ddim", 50), ("ddim", 25), ("dpm", 20), ("dpm", 10))  # on the baseline arm, at SAMPLER_GUIDANCE
SAMPLER_ARM, SAMPLER_GUIDANCE = "ldm-eps", 3.0


@dataclasses.dataclass(frozen=True)
class AutoencoderArm:
    name: str  # folder under --out and table row
    overrides: tuple[str, ...]  # train-ae overrides of `preset`: the lever
    note: str  # why it is measured
    preset: str = "kl-tiny"


# vq-tiny with kl-tiny's encoder, decoder and lr (4 latent channels; the quantizer works on quant_conv's
# output), so a tokenizer arm differs from ae-lr in the bottleneck only (issue 15).
AS_KL_TINY = (
    *("model.latent_channels=4", "model.mid_block_attention=true", "model.quantizer.code_dim=null"),
    "optim.lr=1.0e-3",
)


@dataclasses.dataclass(frozen=True)
class DiffusionArm:
    name: str
    autoencoder: str  # an AutoencoderArm's name: the latents it is trained on
    overrides: tuple[str, ...]  # train-ldm ldm-tiny overrides: the lever
    note: str


# kl-tiny's lr until the ae-lr arm showed 1400 steps at it undertrained; the arms measured before keep it.
LR_BEFORE = "optim.lr=3.0e-4"
AUTOENCODERS = (
    AutoencoderArm("ae-c4", (LR_BEFORE,), "kl-tiny as the demo trained it (f4, 4 channels, lr 3e-4)"),
    AutoencoderArm("ae-c8", (LR_BEFORE, "model.latent_channels=8"), "twice the latent channels, same grid"),
    AutoencoderArm(
        "ae-c16", (LR_BEFORE, "model.latent_channels=16"), "four times the latent channels (SD3's 16)"
    ),
    AutoencoderArm(
        "ae-f2",
        (LR_BEFORE, "model.block_out_channels=[32,64]"),
        "f2: a 16x16 grid of 4 channels (one level fewer)",
    ),
    AutoencoderArm("ae-l1", (LR_BEFORE, "loss.reconstruction=l1"), "L1 pixels (LDM's) instead of L2"),
    AutoencoderArm(
        "ae-eq", (LR_BEFORE, "loss.equivariance_weight=1.0"), "EQ-VAE equivariance loss, weight 1"
    ),
    AutoencoderArm("ae-lr", ("optim.lr=1.0e-3",), "3.3x the learning rate (kl-tiny's lr now)"),
    AutoencoderArm(
        "ae-c8-lr", ("model.latent_channels=8",), "8 latent channels at kl-tiny's lr (PSNR floor + 3 dB?)"
    ),
    AutoencoderArm("ae-wide", ("model.block_out_channels=[64,96,96]",), "wider levels (2.3x the weights)"),
    AutoencoderArm(
        "vq-ema", (*AS_KL_TINY, "model.quantizer.num_codes=1024"), "VQ-EMA, 1024 4-d codes", "vq-tiny"
    ),
    AutoencoderArm(
        "vq-rotation",
        (*AS_KL_TINY, "model.quantizer.num_codes=1024", "model.quantizer.gradient=rotation"),
        "VQ-EMA with the rotation trick, 1024 codes",
        "vq-tiny",
    ),
    AutoencoderArm(
        "vq-fsq",
        (*AS_KL_TINY, "model.quantizer.kind=fsq", "model.quantizer.levels=[8,5,5,5]"),
        "FSQ [8, 5, 5, 5], 1000 codes",
        "vq-tiny",
    ),
    AutoencoderArm(
        "vq-lfq",
        (*AS_KL_TINY, "model.quantizer.kind=lfq", "model.quantizer.lfq_bits=10"),
        "LFQ, 10 bits (1024 codes)",
        "vq-tiny",
    ),
)
DIFFUSIONS = (
    DiffusionArm("ldm-eps", "ae-c4", (), "ldm-tiny as the demo trains it: eps + Min-SNR-5"),
    DiffusionArm("ldm-v", "ae-c4", ("diffusion.prediction_type=v_prediction",), "v-prediction + Min-SNR-5"),
    DiffusionArm(
        "ldm-v-zsnr",
        "ae-c4",
        ("diffusion.prediction_type=v_prediction", "diffusion.zero_terminal_snr=true"),
        "v-prediction, zero terminal SNR",
    ),
    DiffusionArm(
        "ldm-flow",
        "ae-c4",
        ("diffusion.prediction_type=flow", "diffusion.timestep_sampling=logit_normal"),
        "flow matching, logit-normal t (SD3)",
    ),
    DiffusionArm(
        "ldm-cosine", "ae-c4", ("diffusion.beta_schedule=squaredcos_cap_v2",), "eps + Min-SNR-5, cosine betas"
    ),
    DiffusionArm("ldm-2x", "ae-c4", ("train.max_steps=2400",), "the demo's recipe, twice the steps"),
    DiffusionArm("ldm-eps-lr", "ae-lr", (), "the demo's diffusion recipe on ae-lr's latents"),
    DiffusionArm("ldm-fsq", "vq-fsq", (), "the demo's diffusion recipe on FSQ's latents (best tokenizer)"),
    DiffusionArm("ldm-rotation", "vq-rotation", (), "the demo's diffusion recipe on VQ-rotation's latents"),
    DiffusionArm(
        "ldm-lr", "ae-lr", ("optim.lr=1.0e-3",), "3.3x the learning rate: is 1200 steps at 3e-4 too few?"
    ),
    DiffusionArm(
        "ldm-flow-lr",
        "ae-lr",
        ("diffusion.prediction_type=flow", "diffusion.timestep_sampling=logit_normal"),
        "flow matching, logit-normal t, on ae-lr's latents",
    ),
    DiffusionArm(
        "ldm-lr-attn",
        "ae-lr",
        ("optim.lr=1.0e-3", "model.attention_levels=[true,true]"),
        "lr 1e-3, self-attention at 8x8 too (global shape)",
    ),
    DiffusionArm(
        "ldm-b32",
        "ae-lr",
        ("optim.lr=1.0e-3", "train.batch_size=32", "train.max_steps=2400", "train.ema_decay=0.9975"),
        "lr 1e-3, half the batch for twice the updates (equal samples seen)",
    ),
    DiffusionArm(
        "ldm-2x-lr",
        "ae-lr",
        ("optim.lr=1.0e-3", "train.max_steps=2400", "train.ema_decay=0.9975"),
        "lr 1e-3 and twice the steps: is the budget what caps the samples?",
    ),
    DiffusionArm(
        "ldm-wide",
        "ae-lr",
        ("model.block_out_channels=[96,192]",),
        "1.5x the UNet's width (2.2x the weights)",
    ),
    DiffusionArm(
        "ldm-wide-clock",
        "ae-lr",
        ("model.block_out_channels=[96,192]", "train.max_steps=730"),
        "1.5x the width at ldm-tiny's wall clock (730 steps)",
    ),
    DiffusionArm("ldm-c8-lr", "ae-c8-lr", ("optim.lr=1.0e-3",), "lr 1e-3 on 8-channel latents"),
    DiffusionArm("ldm-rotation-lr", "vq-rotation", ("optim.lr=1.0e-3",), "lr 1e-3 on VQ-rotation's latents"),
    DiffusionArm(
        "ldm-per-channel",
        "ae-lr",
        ("data.normalization=per_channel",),
        "each latent channel shifted and scaled to unit variance (ae-lr's stds span 1.5-3.0)",
    ),
    DiffusionArm(
        "ldm-shift-scale", "ae-lr", ("data.normalization=shift_scale",), "one global shift and scale (SD3)"
    ),
    DiffusionArm("ldm-v-lr", "ae-lr", ("diffusion.prediction_type=v_prediction",), "v-prediction, Min-SNR-5"),
    DiffusionArm(
        "ldm-v-zsnr-lr",
        "ae-lr",
        ("diffusion.prediction_type=v_prediction", "diffusion.zero_terminal_snr=true"),
        "v-prediction, zero terminal SNR (Lin et al. 2024)",
    ),
    DiffusionArm(
        "ldm-cosine-lr", "ae-lr", ("diffusion.beta_schedule=squaredcos_cap_v2",), "cosine betas (eps)"
    ),
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Stage sizes. FULL is the demo's; QUICK checks the plumbing in a minute."""

    classifier_steps: int
    per_class: int  # samples per class and guidance
    ae: tuple[str, ...] = ()  # train-ae overrides for every arm
    ldm: tuple[str, ...] = ()  # train-ldm overrides for every arm
    encode: tuple[str, ...] = ()  # encode options

    @property
    def judge_name(self) -> str:
        """The judge's folder, and the tag of every score it makes: a judge trained for other steps scores
        every arm afresh (the trainings are kept) instead of mixing with the old scores."""
        return f"judge-{self.classifier_steps}-steps"


FULL = Budget(classifier_steps=CLASSIFIER_STEPS, per_class=32)
QUICK = Budget(
    classifier_steps=20,
    per_class=2,
    ae=(
        *("train.max_steps=4", "data.builtin_samples=96", "data.held_out_samples=16"),
        *("export.scaling_samples=32", "data.num_workers=0"),
    ),
    ldm=(
        *("train.max_steps=4", "model.block_out_channels=[16,32]", "model.attention_head_dim=8"),
        *("model.norm_num_groups=8", "train.batch_size=8", "data.num_workers=0"),
        *("sample.per_class=1", "sample.num_inference_steps=2"),
    ),
    encode=("--builtin-samples", "96", "--num-workers", "0"),
)


# ---------------------------------------------------------------------------------------------------------
# stages


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    yield
    print(f"=== {name}: {time.perf_counter() - start:.0f} s", flush=True)


def cached(path: Path, compute) -> dict:
    """`compute()`'s JSON, computed once: a rerun reads it back."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(compute(), indent=2))
    return json.loads(path.read_text())


def train_seconds(run_dir: Path, batch_size: int, steps: int) -> dict[str, float]:
    """Seconds per step from the logged throughput (median over logs, so resumes and sampling do not
    count), and the whole run's training time at that rate."""
    rates = [v for row in read_stats(run_dir) for k, v in row.items() if k.endswith("_per_sec") and v]
    per_step = batch_size / statistics.median(rates) if rates else float("nan")
    return {"seconds_per_step": per_step, "train_seconds": per_step * steps}


def judge_stage(out: Path, ae_cfg: AutoencoderTrainConfig, budget: Budget):
    """The judge (trained once, saved) and its own figures, with the bicubic thumbnails' ceilings."""
    folder = out / budget.judge_name
    if not (folder / "judge.json").is_file():
        with timed("judging classifier"):
            classifier, real_features, figures = train_judge(ae_cfg, budget.classifier_steps)
            figures["classifier_steps"] = budget.classifier_steps
            dataset, _, held_out = judge_data(ae_cfg)
            real, labels = stack_items(dataset, held_out)  # (n, 3, R, R) in [-1, 1]
            side = real.shape[-1]
            for small in THUMBNAIL_SIDES:
                thumb = F.interpolate(real, size=(small, small), mode="bicubic", antialias=True)
                up = F.interpolate(thumb, size=(side, side), mode="bicubic").clamp(-1, 1)
                figures[f"bicubic_{small}px"] = judge(classifier, up, labels, real_features)
            folder.mkdir(parents=True, exist_ok=True)
            save_classifier(classifier, folder / "classifier.safetensors")
            torch.save(real_features, folder / "real_features.pt")
            (folder / "judge.json").write_text(json.dumps(figures, indent=2))
    classifier = load_classifier(folder / "classifier.safetensors")
    return (
        classifier,
        torch.load(folder / "real_features.pt"),
        json.loads((folder / "judge.json").read_text()),
    )


def autoencoder_stage(arm: AutoencoderArm, out: Path, budget: Budget, commands: list[str], judged) -> dict:
    run_dir = out / arm.name
    overrides = [f"run_dir={run_dir}", *arm.overrides, *budget.ae]
    cfg = load_config(AutoencoderTrainConfig, arm.preset, overrides)
    done = (run_dir / "metrics.json").is_file()
    run_stage(
        f"train-ae {arm.name}", ["train-ae", arm.preset, *overrides, "train.resume=latest"], commands, done
    )
    classifier, real_features, _ = judged
    vae = load_autoencoder(run_dir / "export", "--model")
    ceiling = cached(
        run_dir / f"{budget.judge_name}.json",
        lambda: judge_reconstructions(classifier, real_features, cfg, vae),
    )
    held = json.loads((run_dir / "metrics.json").read_text())["held_out"]
    return {
        "preset": arm.preset,
        "overrides": list(arm.overrides),
        "note": arm.note,
        "steps": cfg.train.max_steps,
        **train_seconds(run_dir, cfg.train.batch_size, cfg.train.max_steps),
        **{
            key: held[key]
            for key in ("psnr_db", "bicubic_psnr_db", "ssim", "active_channels", "latent_shape", "codebook")
            if key in held  # codebook: VQ arms only
        },
        "reconstructions": ceiling,
    }


def diffusion_stage(arm: DiffusionArm, out: Path, budget: Budget, commands: list[str], judged) -> dict:
    latents, run_dir = out / f"latents-{arm.autoencoder}", out / arm.name
    encode = [
        "encode",
        "--model",
        str(out / arm.autoencoder / "export"),
        "--out",
        str(latents),
        *budget.encode,
    ]
    run_stage(f"encode {arm.autoencoder}", encode, commands)  # a finished store verifies and returns
    overrides = [f"run_dir={run_dir}", f"data.latents={latents}", *arm.overrides, *budget.ldm]
    cfg = load_config(LDMTrainConfig, "ldm-tiny", overrides)
    done = (run_dir / "report.json").is_file()
    run_stage(
        f"train-ldm {arm.name}", ["train-ldm", "ldm-tiny", *overrides, "train.resume=latest"], commands, done
    )
    classifier, real_features, _ = judged

    def sweep() -> dict:
        pipe = load_pipeline(str(run_dir / "pipeline"))
        with timed(f"{arm.name}: samples at guidance {', '.join(f'{g:g}' for g in GUIDANCE)}"):
            scores = score_pipeline(
                pipe, classifier, real_features, cfg.sample, budget.per_class, cfg.seed + 1, GUIDANCE
            )  # GUIDANCE holds 1 and ldm-tiny's own scale, so these are its rows
        return {name.removeprefix("guidance_"): figures for name, figures in scores.items()}

    def samplers() -> dict:
        pipe = load_pipeline(str(run_dir / "pipeline"))
        labels = torch.arange(classifier.num_classes).repeat_interleave(budget.per_class)
        scores = {}
        for name, steps in SAMPLERS:
            with_scheduler(pipe, name)
            start = time.perf_counter()
            grid = sample_by_class(pipe, budget.per_class, steps, SAMPLER_GUIDANCE, cfg.seed + 1)
            seconds = time.perf_counter() - start
            scores[f"{name} {steps}"] = {
                **judge(classifier, grid.flatten(0, 1) * 2 - 1, labels, real_features),
                "seconds": seconds,
            }
            print(f"{arm.name}: {name} {steps} steps: {scores[f'{name} {steps}']}", flush=True)
        return scores

    report = json.loads((run_dir / "report.json").read_text())
    extra = (
        {"samplers": cached(run_dir / f"samplers-{budget.judge_name}.json", samplers)}
        if arm.name == SAMPLER_ARM
        else {}
    )
    return {
        "autoencoder": arm.autoencoder,
        "overrides": list(arm.overrides),
        "note": arm.note,
        "steps": cfg.train.max_steps,
        **train_seconds(run_dir, cfg.train.batch_size, cfg.train.max_steps),
        "final_loss": report["final_loss"],
        "sampler": f"{cfg.sample.scheduler}, {cfg.sample.num_inference_steps} steps",
        "guidance": cached(run_dir / f"samples-{budget.judge_name}.json", sweep),
        **extra,
    }


# ---------------------------------------------------------------------------------------------------------
# report


def table(results: dict) -> list[str]:
    judge_figures = results["judge"]
    lines = [
        f"Judge: {judge_figures['classifier_real_held_out_accuracy']:.3f} on real held-out images; "
        + ", ".join(
            f"bicubic {side} px thumbnails {judge_figures[f'bicubic_{side}px']['accuracy']:.3f}"
            for side in THUMBNAIL_SIDES
        )
        + f"; real-vs-real feature FD {judge_figures['real_vs_real_frechet']:.2f}.",
        "",
        "| autoencoder | lever | train s | PSNR / bicubic floor (dB) | reconstructions: accuracy / FD |",
        "|---|---|---|---|---|",
    ]
    for name, arm in results["autoencoders"].items():
        rec = arm["reconstructions"]
        lines.append(
            f"| {name} | {arm['note']} | {arm['train_seconds']:.0f} | {arm['psnr_db']:.2f} / "
            f"{arm['bicubic_psnr_db']:.2f} | {rec['accuracy']:.3f} / {rec['frechet_vs_real']:.2f} |"
        )
    lines += [
        "",
        "| LDM | on | lever | train s | " + " | ".join(f"g={g:g} acc / FD" for g in GUIDANCE) + " |",
        "|---|---|---|---|" + "---|" * len(GUIDANCE),
    ]
    for name, arm in results["diffusions"].items():
        cells = [f"{s['accuracy']:.3f} / {s['frechet_vs_real']:.2f}" for s in arm["guidance"].values()]
        lines.append(
            f"| {name} | {arm['autoencoder']} | {arm['note']} | {arm['train_seconds']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    sampled = {name: arm["samplers"] for name, arm in results["diffusions"].items() if "samplers" in arm}
    for name, scores in sampled.items():
        lines += [
            "",
            f"Samplers on {name}, guidance {SAMPLER_GUIDANCE:g}, {results['samples_per_class']} per class:",
            "",
            "| sampler, steps | accuracy / FD | seconds |",
            "|---|---|---|",
            *(
                f"| {key} | {s['accuracy']:.3f} / {s['frechet_vs_real']:.2f} | {s['seconds']:.0f} |"
                for key, s in scores.items()
            ),
        ]
    return lines


def plot(results: dict, path: Path) -> None:
    """Class accuracy against guidance and against feature FD for every LDM arm; the ceilings dashed."""
    save_guidance_curves(
        {name: arm["guidance"] for name, arm in results["diffusions"].items()},
        {
            f"{name} reconstructions": arm["reconstructions"]["accuracy"]
            for name, arm in results["autoencoders"].items()
        },
        path,
    )


def merged(results: dict, path: Path) -> dict:
    """This run's arms over those already reported at `path`, so the study can run a few arms at a time.

    Only a report with the same judge figures (same data, judge and budget) is merged into; any other is
    replaced, so no table mixes arms scored against different data.
    """
    if not path.is_file():
        return results
    earlier = json.loads(path.read_text())
    if (earlier.get("judge"), earlier.get("quick")) != (results["judge"], results["quick"]):
        return results
    return {
        **results,
        "autoencoders": {**earlier["autoencoders"], **results["autoencoders"]},
        "diffusions": {**earlier["diffusions"], **results["diffusions"]},
        "commands": [*earlier["commands"], *(c for c in results["commands"] if c not in earlier["commands"])],
    }


def run_recipes(args: argparse.Namespace) -> dict:
    budget = QUICK if args.quick else FULL
    out = Path(args.out)
    selected = set(args.arms or [arm.name for arm in (*AUTOENCODERS, *DIFFUSIONS)])
    diffusions = [arm for arm in DIFFUSIONS if arm.name in selected]
    needed = selected | {arm.autoencoder for arm in diffusions}
    autoencoders = [arm for arm in AUTOENCODERS if arm.name in needed]
    known = [arm.name for arm in (*AUTOENCODERS, *DIFFUSIONS)]
    unknown = selected - set(known)
    if unknown:
        raise ConfigError(f"--arms {' '.join(sorted(unknown))}: unknown; arms: {', '.join(known)}")
    ae_cfg = load_config(AutoencoderTrainConfig, "kl-tiny", list(budget.ae))
    commands: list[str] = []
    judged = judge_stage(out, ae_cfg, budget)
    results = {
        "benchmark": "recipes",
        "machine": f"{torch.get_num_threads()} CPU threads, {platform.machine()}"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "quick": args.quick,
        "samples_per_class": budget.per_class,
        "judge": judged[2],
        "autoencoders": {
            arm.name: autoencoder_stage(arm, out, budget, commands, judged) for arm in autoencoders
        },
        "diffusions": {arm.name: diffusion_stage(arm, out, budget, commands, judged) for arm in diffusions},
        "commands": commands,
    }
    report_dir = out if args.quick else BENCHMARKS
    results = merged(results, report_dir / "results-recipes.json")
    (report_dir / "results-recipes.json").write_text(json.dumps(results, indent=2))
    (report_dir / "recipes.md").write_text("\n".join(table(results)) + "\n")
    plot(results, report_dir / "recipes_guidance.png")
    print("\n".join(table(results)))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recipes", help="every run folder goes here")
    parser.add_argument("--arms", nargs="*", help="only these arms (and the autoencoders they need)")
    parser.add_argument("--quick", action="store_true", help="a few steps everywhere; report into --out")
    args = parser.parse_args()
    try:
        run_recipes(args)
    except ConfigError as error:
        print(f"recipes: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
