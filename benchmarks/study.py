"""AE, VAE, VQ-VAE and latent diffusion on their latents, measured side by side on builtin:shapes (issue 6).

The textbook comparison of autoencoder families (Kingma & Welling 2014; Higgins et al., beta-VAE, ICLR 2017;
van den Oord et al., VQ-VAE, NeurIPS 2017; Rombach et al., LDM, CVPR 2022), with numbers instead of claims.
Every autoencoder has kl-tiny's encoder and decoder (f4, 8x8x4 latents at 32 px), the same steps and batch,
and no GAN: a plain autoencoder (KL weight 0), a VAE at three betas (`loss.kl_weight`, LDM's meaning) and a
VQ-VAE. Each is measured on unseen shapes (reconstruction, sharpness, rate, active channels, interpolation
smoothness; prior samples for KL models, judged by a classifier trained on real images). Then a latent
diffusion UNet is trained on the latents of the chosen VAE and on the VQ-VAE's, and its class-conditional
samples are scored as `ldm-vae demo` scores them. Every stage is an `ldm-vae` child process (printed, so
any can be rerun by hand); finished stages are skipped on a rerun, so an interrupted study resumes.

    python benchmarks/study.py [--out runs/study] [--ae-steps 600] [--ldm-steps 800] [--quick]

Writes benchmarks/results-study.json, study.md and study_rate_distortion.png (into --out with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import save_image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.metrics.judge import CLASSIFIER_STEPS, train_judge  # noqa: E402
from ldm_vae.pipelines.sampling import load_pipeline, score_pipeline  # noqa: E402
from ldm_vae.training.stages import run_stage  # noqa: E402

SAMPLES_PER_CLASS = 32  # class-conditional samples scored per class, as the demo

from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, load_config  # noqa: E402
from ldm_vae.errors import ConfigError  # noqa: E402
from ldm_vae.metrics.classifier import SampleClassifier, frechet_distance  # noqa: E402
from ldm_vae.models import load_autoencoder  # noqa: E402
from ldm_vae.viz.interpolate import METHODS  # noqa: E402
from ldm_vae.viz.prior import prior_samples  # noqa: E402

BENCHMARKS = REPO / "benchmarks"
KL_BETAS = (1e-6, 0.1, 1.0)  # loss.kl_weight of the three VAEs; the AE is 0
BETA_CHOICE = (
    "1e-6 is LDM's KL-f8 weight (kl-tiny keeps its meaning: relative to the per-pixel sum), which here "
    "weighs a nat per latent element at beta/12 against the per-pixel squared error, so it is nearly an AE. "
    "150-step probes (GAN off) gave KL 2.73 / 2.68 / 2.51 / 1.81 nats per element and PSNR 17.30 / 17.24 / "
    "17.08 / 16.15 dB at beta 1e-6 / 1e-2 / 0.1 / 1: 1e-2 is indistinguishable from 1e-6 at this budget, "
    "0.1 and 1 open a visible rate-distortion spread."
)
GAN = "loss.disc_weight=0"  # off for all: the comparison is of the latent regulariser, and it is cheaper
LDM_SIZE: tuple[str, ...] = ()  # ldm-tiny's own UNet ([64, 128]; ~0.3 s/step at batch 64 on 2 cores)
EVAL_SEED = 1  # eval-ae and interpolate draw shapes with seed 1; training used seed 0, so none was seen
CONFIDENT = 0.9  # a prior sample counts as recognisable when the classifier's top class has this probability


@dataclasses.dataclass(frozen=True)
class Budget:
    """Sizes of every stage; FULL fits < 30 min on 2 CPU cores, QUICK is a smoke run of the plumbing."""

    ae_steps: int  # training steps of each autoencoder (batch 16)
    ldm_steps: int  # training steps of each latent diffusion UNet (batch 64)
    eval_images: int  # unseen images for eval-ae
    pairs: int  # interpolation pairs
    frames: int  # frames per interpolation strip
    classifier_steps: int  # judging classifier
    per_class: int  # prior samples and LDM samples = per_class x classes
    encode_images: int  # images encoded for each LDM
    ae_extra: tuple[str, ...] = ()  # further train-ae overrides
    ldm_extra: tuple[str, ...] = ()  # further train-ldm overrides


FULL = Budget(
    ae_steps=600,
    ldm_steps=800,
    eval_images=512,
    pairs=8,
    frames=9,
    classifier_steps=CLASSIFIER_STEPS,
    per_class=SAMPLES_PER_CLASS,
    encode_images=8192,
)
QUICK = Budget(
    ae_steps=10,
    ldm_steps=10,
    eval_images=64,
    pairs=2,
    frames=5,
    classifier_steps=30,
    per_class=4,
    encode_images=1024,
    ae_extra=("export.scaling_samples=64", "data.held_out_samples=32"),
    ldm_extra=("sample.num_inference_steps=10", "sample.per_class=1"),
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One autoencoder of the comparison."""

    name: str  # folder under --out and table row
    preset: str  # configs/ preset
    overrides: tuple[str, ...]  # what makes it this model
    beta: float | None  # loss.kl_weight; None for the VQ-VAE


def arms(kl: AutoencoderTrainConfig) -> list[Arm]:
    """AE, the VAEs and a VQ-VAE whose encoder/decoder take kl-tiny's widths, levels, layers, groups,
    latent channels and lr, so only the bottleneck differs (codes are looked up in the 4-d latent itself)."""
    m = kl.model
    same_size = (
        f"model.block_out_channels=[{','.join(map(str, m.block_out_channels))}]",
        f"model.layers_per_block={m.layers_per_block}",
        f"model.latent_channels={m.latent_channels}",
        f"model.norm_num_groups={m.norm_num_groups}",
        f"model.mid_block_attention={str(m.mid_block_attention).lower()}",
        "model.quantizer.code_dim=null",
        f"optim.lr={kl.optim.lr!r}",  # vq-tiny's own lr differs; the bottleneck is the only difference
    )
    vaes = [Arm(f"vae-{beta:g}", "kl-tiny", (f"loss.kl_weight={beta!r}",), beta) for beta in KL_BETAS]
    ae = Arm("ae", "kl-tiny", ("loss.kl_weight=0.0", "model.deterministic=true"), 0.0)  # no posterior noise
    return [ae, *vaes, Arm("vq", "vq-tiny", same_size, None)]


def stage(name: str, arguments: list[str], commands: list[str], seconds: dict, done: bool = False) -> None:
    """`run_stage` of the demo, with its wall time printed and kept (None: finished by an earlier run)."""
    seconds[name] = run_stage(name, arguments, commands, done)
    if seconds[name] is not None:
        print(f"=== {name}: {seconds[name]:.0f} s", flush=True)


@contextlib.contextmanager
def timed(name: str, seconds: dict) -> Iterator[None]:
    """Time an in-process stage like `stage` times a child process."""
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    print(f"=== {name}: {seconds[name]:.0f} s", flush=True)


def measure_autoencoder(arm: Arm, run_dir: Path, budget: Budget, commands: list[str], seconds: dict) -> None:
    """eval-ae and interpolate on unseen shapes, each skipped when its output exists."""
    export = str(run_dir / "export")
    unseen = ["--data", "builtin:shapes", "--seed", str(EVAL_SEED)]
    evaluate = ["eval-ae", "--model", export, *unseen, "--out", str(run_dir / "eval"), "--num-workers", "1"]
    evaluate += ["--samples", str(budget.eval_images), "--builtin-samples", str(budget.eval_images)]
    stage(f"eval-ae {arm.name}", evaluate, commands, seconds, done=(run_dir / "eval" / "eval.json").is_file())
    interpolate = ["interpolate", "--model", export, *unseen, "--out", str(run_dir / "interpolation")]
    interpolate += ["--pairs", str(budget.pairs), "--frames", str(budget.frames), "--method", "both"]
    done = (run_dir / "interpolation" / "interpolation.json").is_file()
    stage(f"interpolate {arm.name}", interpolate, commands, seconds, done=done)


def autoencoder_figures(arm: Arm, run_dir: Path) -> dict:
    """The measured figures of one autoencoder, from eval.json and interpolation.json."""
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    interpolation = json.loads((run_dir / "interpolation" / "interpolation.json").read_text())
    metrics, latents = evaluation["metrics"], evaluation["latents"]
    channels = latents["shape"][0]
    figures = {
        "beta": arm.beta,
        "overrides": list(arm.overrides),
        "parameters": sum(p.numel() for p in load_autoencoder(run_dir / "export", "--model").parameters()),
        **{key: metrics[key] for key in ("psnr_db", "ssim", "sharpness", "bicubic_psnr_db")},
        "active_channels": latents["active_channels"],
        "latent_shape": latents["shape"],
        "interpolation": {"distance": interpolation["distance"], **interpolation["methods"]},
    }
    for method in METHODS:
        figures["interpolation"][method].pop("per_pair")
    if "codebook" in latents:  # the rate of a code: the entropy of the code histogram, ln(perplexity) nats
        figures["codebook"] = latents["codebook"]
        figures["code_entropy_per_element"] = math.log(latents["codebook"]["perplexity"]) / channels
    elif arm.beta:  # the AE's point posterior has a KL too, but it measures the pinned variance, not a rate
        figures["kl_per_element"] = sum(latents["kl_per_channel"]) / channels  # nats
    return figures


@torch.no_grad()
def prior_figures(
    export: Path, classifier: SampleClassifier, real_features: Tensor, count: int, seed: int, png: Path
) -> dict[str, float]:
    """Decode `count` draws from the N(0, I) prior (mapped back through the model's scaling factor). They have
    no label, so report how sure the judging classifier is of them and their feature FD to real images."""
    samples = prior_samples(load_autoencoder(export, "--model"), count, torch.Generator().manual_seed(seed))
    save_image(samples[:64], png, normalize=True, value_range=(-1, 1))  # (n, 3, R, R) in [-1, 1]
    features = classifier.features(samples)  # (n, d)
    confidence = classifier.head(features).softmax(dim=1).amax(dim=1)  # (n,)
    return {
        "samples": count,
        "mean_confidence": confidence.mean().item(),
        "confident_fraction": (confidence > CONFIDENT).float().mean().item(),
        "frechet_vs_real": frechet_distance(real_features, features),
    }


def choose_vae(models: dict[str, dict]) -> tuple[str, str]:
    """(name, why): the VAE whose prior samples are closest to real images (feature FD) among those that
    reconstruct better than bicubic at the latent size, i.e. the most Gaussian-like latents that are not the
    bottleneck of the chain; LDM's 1e-6 when none beats that floor."""
    vaes = {name: f for name, f in models.items() if f["beta"]}
    eligible = {name: f for name, f in vaes.items() if f["psnr_db"] > f["bicubic_psnr_db"]}
    if not eligible:
        name = f"vae-{KL_BETAS[0]:g}"
        return name, f"no VAE beat the bicubic floor, so LDM's beta ({name})"
    name = min(eligible, key=lambda n: eligible[n]["prior"]["frechet_vs_real"])
    return name, f"lowest prior-sample FD among the VAEs above the bicubic floor ({', '.join(eligible)})"


def train_ldm(
    arm_dir: Path, out: Path, name: str, budget: Budget, commands: list[str], seconds: dict
) -> Path:
    """Encode with `arm_dir/export`, then train ldm-tiny on the latents; returns the LDM's run dir."""
    latents, ldm_dir = out / f"latents-{name}", out / f"ldm-{name}"
    encode = ["encode", "--model", str(arm_dir / "export"), "--out", str(latents), "--num-workers", "1"]
    encode += ["--builtin-samples", str(budget.encode_images)]  # at the model's sample_size, 32 px
    stage(f"encode {name}", encode, commands, seconds)  # a finished store verifies and returns
    train = ["train-ldm", "ldm-tiny", *ldm_overrides(ldm_dir, latents, budget), "train.resume=latest"]
    stage(f"train-ldm {name}", train, commands, seconds, done=(ldm_dir / "report.json").is_file())
    return ldm_dir


def ldm_overrides(ldm_dir: Path, latents: Path, budget: Budget) -> list[str]:
    """train-ldm ldm-tiny's overrides: the same UNet and steps on either autoencoder's latents."""
    steps = f"train.max_steps={budget.ldm_steps}"
    return [f"run_dir={ldm_dir}", f"data.latents={latents}", steps, *LDM_SIZE, *budget.ldm_extra]


def score_ldm(
    ldm_dir: Path,
    classifier: SampleClassifier,
    real_features: Tensor,
    ldm_cfg: LDMTrainConfig,
    per_class: int,
    seed: int,
) -> dict:
    """The run's own report figures, and its samples scored exactly as `ldm-vae demo` scores them."""
    report = json.loads((ldm_dir / "report.json").read_text())
    pipe = load_pipeline(str(ldm_dir / "pipeline"))
    return {
        **{key: report[key] for key in ("step", "final_loss", "unet_parameters", "reload_max_abs_diff")},
        **score_pipeline(pipe, classifier, real_features, ldm_cfg.sample, per_class, seed),
    }


# ---------------------------------------------------------------------------------------------------------
# Report


def cell(value: float | None, spec: str) -> str:
    """A table cell; a dash where the figure does not apply (no prior for VQ, no LDM on most models)."""
    return "–" if value is None else format(value, spec)


def table_rows(results: dict) -> list[str]:
    """One markdown row per autoencoder; LDM figures on the rows of the two autoencoders it was trained on."""
    guidance = f"guidance_{results['settings']['guidance_scale']:g}"
    rows = []
    for name, f in results["models"].items():
        prior, ldm = f.get("prior", {}), results["ldm"]["runs"].get(name, {}).get(guidance, {})
        linear = f["interpolation"]["linear"]
        if "kl_per_element" in f:
            rate = f"{f['kl_per_element']:.3f}"
        elif "code_entropy_per_element" in f:
            rate = f"{f['code_entropy_per_element']:.3f}†"
        else:
            rate = "unbounded"  # the deterministic AE
        rows.append(
            f"| {name} | {cell(f['beta'], 'g')} | {f['parameters'] / 1e6:.3f} M | {f['psnr_db']:.2f} | "
            f"{f['ssim']:.3f} | {f['sharpness']:.3f} | {rate} | "
            f"{f['active_channels']} / {f['latent_shape'][0]} | "
            f"{cell(prior.get('mean_confidence'), '.2f')} / {cell(prior.get('confident_fraction'), '.2f')} / "
            f"{cell(prior.get('frechet_vs_real'), '.2f')} | "
            f"{linear['mean_step']:.4f} / {linear['step_variance']:.2e} | "
            f"{cell(ldm.get('accuracy'), '.3f')} / {cell(ldm.get('frechet_vs_real'), '.2f')} |"
        )
    return rows


def trend(values: list[float]) -> str:
    """'falls', 'rises' or 'is not monotonic' for values ordered by increasing beta."""
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    return (
        "falls" if all(s < 0 for s in steps) else "rises" if all(s > 0 for s in steps) else "is not monotonic"
    )


def reading(results: dict) -> list[str]:
    """Sentences stated from the measured numbers, so the conclusions follow the run, whatever it gives."""
    models = results["models"]
    kl = sorted((f["beta"], name) for name, f in models.items() if f["beta"] is not None)
    vaes = [(beta, name) for beta, name in kl if beta > 0]
    kls, psnrs = [models[n]["kl_per_element"] for _, n in vaes], [models[n]["psnr_db"] for _, n in vaes]
    ae = models["ae"]
    floor = next(iter(models.values()))["bicubic_psnr_db"]
    above = [name for name, f in models.items() if f["psnr_db"] > floor]
    sharpest = max(models, key=lambda n: models[n]["sharpness"])
    smoothest = min(models, key=lambda n: models[n]["interpolation"]["linear"]["step_variance"])
    priors = {n: models[n]["prior"]["frechet_vs_real"] for _, n in kl}
    best_prior = min(priors, key=priors.get)
    sentences = [
        f"As beta rises from {vaes[0][0]:g} to {vaes[-1][0]:g}, the KL per latent element {trend(kls)} "
        f"({kls[0]:.2f} to {kls[-1]:.2f} nats) and the held-out PSNR {trend(psnrs)} "
        f"({psnrs[0]:.2f} to {psnrs[-1]:.2f} dB); the deterministic AE (no posterior noise, no rate bound) "
        f"reconstructs at {ae['psnr_db']:.2f} dB.",
        f"Above the bicubic floor ({floor:.2f} dB): {', '.join(above) or 'none'}.",
        f"Sharpest reconstructions: {sharpest} ({models[sharpest]['sharpness']:.3f}; 1 = as sharp as input).",
        "Prior-sample feature FD: " + ", ".join(f"{n} {fd:.2f}" for n, fd in priors.items()) + "; lowest "
        f"{best_prior}, whose samples the classifier is > {CONFIDENT} sure of in "
        f"{models[best_prior]['prior']['confident_fraction']:.0%} of cases.",
        f"Smoothest interpolation (lowest variance of the linear step): {smoothest}.",
    ]
    collapsed = [n for n, f in models.items() if f["active_channels"] < f["latent_shape"][0]]
    sentences.append(
        f"Inactive latent channels (variance across images < 0.01) in: {', '.join(collapsed)}."
        if collapsed
        else "Every model keeps all its latent channels active."
    )
    vq = models["vq"]
    rank = sum(vq["psnr_db"] > models[n]["psnr_db"] for _, n in kl)
    sentences.append(
        f"The VQ-VAE reconstructs at {vq['psnr_db']:.2f} dB, above {rank} of the {len(kl)} KL models, using "
        f"{vq['codebook']['usage']:.0%} of its codes ({vq['code_entropy_per_element']:.2f} nats per element)."
    )
    return sentences + ldm_reading(results)


def ldm_reading(results: dict) -> list[str]:
    """The LDM comparison: which latents gave the better class accuracy and feature FD."""
    guidance = f"guidance_{results['settings']['guidance_scale']:g}"
    runs = {name: run[guidance] for name, run in results["ldm"]["runs"].items()}
    by_accuracy = max(runs, key=lambda n: runs[n]["accuracy"])
    by_fd = min(runs, key=lambda n: runs[n]["frechet_vs_real"])
    scores = "; ".join(
        f"on {name} latents {run['accuracy']:.0%} class accuracy, FD {run['frechet_vs_real']:.2f}"
        for name, run in runs.items()
    )
    accuracies = sorted(run["accuracy"] for run in runs.values())
    samples = results["settings"]["samples"]
    noise = 2 * math.sqrt(accuracies[-1] * (1 - accuracies[-1]) / samples)  # two binomial standard errors
    if accuracies[-1] - accuracies[0] < noise:
        verdict = f"Accuracy is within sampling noise (±{noise:.2f}, {samples} samples); lower FD: {by_fd}."
    elif by_accuracy == by_fd:
        verdict = f"{by_accuracy} latents are better on both."
    else:
        verdict = f"Mixed: {by_accuracy} on accuracy, {by_fd} on FD."
    floor = results["judge"]["real_vs_real_frechet"]
    return [
        f"Latent diffusion ({guidance.replace('_', ' ')}): {scores} (real vs real: {floor:.2f}). {verdict}"
    ]


def write_markdown(results: dict, path: Path, plot: Path) -> None:
    """study.md: the table, the floors, the choices made and the reading, for people."""
    s = results["settings"]
    earlier = sum(value is None for value in results["seconds"].values())
    lines = [
        "# AE / VAE / VQ-VAE / LDM, measured",
        "",
        f"builtin:shapes, 32 px, {results['machine']}; {s['ae_steps']} steps at batch 16 per autoencoder "
        f"(kl-tiny's encoder/decoder, GAN off), {s['ldm_steps']} LDM steps; wall time "
        f"{results['seconds']['total'] / 60:.1f} min ({earlier} stages finished by an earlier run not "
        f"counted). Reconstruction figures on {s['eval_images']} unseen "
        f"images; prior and LDM samples: {s['samples']} each, judged by a classifier trained on real images "
        f"(held-out accuracy {results['judge']['classifier_real_held_out_accuracy']:.3f}).",
        "",
        "| model | β | params | PSNR (dB) | SSIM | sharpness | KL / element (nats) | active channels | "
        "prior: confidence / > 0.9 / FD | interpolation step: mean / variance | "
        f"LDM samples: accuracy / FD (guidance {s['guidance_scale']:g}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *table_rows(results),
        "",
        f"Bicubic floor at the latent size: {results['models']['vq']['bicubic_psnr_db']:.2f} dB. "
        f"Feature FD of real vs real images (the floor): {results['judge']['real_vs_real_frechet']:.2f}. "
        "† VQ-VAE: entropy of its code histogram, ln(perplexity) / channels, the rate of a discrete code. "
        f"Interpolation steps are {results['models']['vq']['interpolation']['distance']} distances between "
        "neighbouring linear-path frames (slerp in the JSON).",
        "",
        f"Betas: {BETA_CHOICE}",
        "",
        f"LDM on {results['ldm']['chosen_vae']}: {results['ldm']['criterion']}.",
        "",
        "## Reading",
        "",
        " ".join(results["reading"]),
        "",
        f"![rate-distortion]({plot.name})",
        "",
    ]
    path.write_text("\n".join(lines))


def write_outputs(results: dict, report_dir: Path) -> None:
    """results-study.json, study_rate_distortion.png and study.md, side by side (the page links the plot)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results-study.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = report_dir / "study_rate_distortion.png"
    plot_rate_distortion(results, plot)
    write_markdown(results, report_dir / "study.md", plot)
    print((report_dir / "study.md").read_text())
    print(f"study finished in {results['seconds']['total'] / 60:.1f} min: {report_dir / 'study.md'}")


def plot_rate_distortion(results: dict, path: Path) -> None:
    """KL per element against PSNR over beta; the VQ-VAE at its code entropy; the deterministic AE, which
    has no rate, and the bicubic floor as horizontal lines."""
    models = results["models"]
    vaes = sorted((f["beta"], name) for name, f in models.items() if f["beta"])
    fig = Figure(figsize=(5.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs, ys = [models[n]["kl_per_element"] for _, n in vaes], [models[n]["psnr_db"] for _, n in vaes]
    ax.plot(xs, ys, "o-", label="VAE (KL rate)")
    for i, ((beta, _), x, y) in enumerate(zip(vaes, xs, ys, strict=True)):
        offset = (6, -12) if i % 2 else (-6, 8)  # alternate sides so neighbouring labels cannot overlap
        ax.annotate(
            f"β={beta:g}", (x, y), textcoords="offset points", xytext=offset, fontsize="small",
            ha="left" if i % 2 else "right",
        )  # fmt: skip
    vq = models["vq"]
    ax.plot([vq["code_entropy_per_element"]], [vq["psnr_db"]], "s", label="VQ-VAE (code entropy)")
    ax.axhline(models["ae"]["psnr_db"], linestyle=":", color="black", label="AE (deterministic, no rate)")
    ax.axhline(vq["bicubic_psnr_db"], linestyle="--", color="gray", label="bicubic at latent size")
    ax.set(xlabel="rate: nats per latent element", ylabel="held-out PSNR (dB)", title="Rate vs distortion")
    ax.margins(x=0.15)  # room for the labels at both ends
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=150)


# ---------------------------------------------------------------------------------------------------------
# Main


def run_study(args: argparse.Namespace) -> dict:
    """Train and measure every autoencoder, train the two LDMs, score everything, write the report."""
    for option, value in (("--ae-steps", args.ae_steps), ("--ldm-steps", args.ldm_steps)):
        if value is not None and value < 1:
            raise ConfigError(f"{option}={value}: must be >= 1")
    budget = QUICK if args.quick else FULL
    budget = dataclasses.replace(
        budget, ae_steps=args.ae_steps or budget.ae_steps, ldm_steps=args.ldm_steps or budget.ldm_steps
    )
    out, report_dir = Path(args.out), Path(args.out) if args.quick else BENCHMARKS
    kl_cfg = load_config(AutoencoderTrainConfig, "kl-tiny", [])
    study = arms(kl_cfg)
    common = [GAN, f"train.max_steps={budget.ae_steps}", *budget.ae_extra, "train.resume=latest"]
    overrides = {arm.name: [f"run_dir={out / arm.name}", *arm.overrides, *common] for arm in study}
    for arm in study:  # bad overrides fail here, before any work
        load_config(AutoencoderTrainConfig, arm.preset, overrides[arm.name])
    ldm_cfg = load_config(
        LDMTrainConfig, "ldm-tiny", ldm_overrides(out / "ldm-vq", out / "latents-vq", budget)
    )
    out.mkdir(parents=True, exist_ok=True)

    commands: list[str] = []
    seconds: dict[str, float | None] = {}
    start = time.perf_counter()
    for arm in study:
        done = (out / arm.name / "metrics.json").is_file()
        stage(f"train-ae {arm.name}", ["train-ae", arm.preset, *overrides[arm.name]], commands, seconds, done)
    for arm in study:
        measure_autoencoder(arm, out / arm.name, budget, commands, seconds)
    with timed("judging classifier", seconds):
        classifier, real_features, judge = train_judge(kl_cfg, budget.classifier_steps)
    count = budget.per_class * classifier.num_classes
    with timed("figures and prior samples", seconds):
        models = {arm.name: autoencoder_figures(arm, out / arm.name) for arm in study}
        for arm in (arm for arm in study if arm.beta is not None):
            png = out / arm.name / "prior_samples.png"
            models[arm.name]["prior"] = prior_figures(
                out / arm.name / "export", classifier, real_features, count, kl_cfg.seed + 1, png
            )
    chosen, criterion = choose_vae(models)
    ldm_dirs = {name: train_ldm(out / name, out, name, budget, commands, seconds) for name in (chosen, "vq")}
    with timed("scoring LDM samples", seconds):
        runs = {
            name: score_ldm(ldm_dir, classifier, real_features, ldm_cfg, budget.per_class, kl_cfg.seed + 1)
            for name, ldm_dir in ldm_dirs.items()
        }
    seconds["total"] = time.perf_counter() - start

    results = {
        "benchmark": "study",
        "machine": f"{torch.get_num_threads()} CPU threads, {platform.machine()}"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "settings": {
            **dataclasses.asdict(budget),
            "quick": args.quick,
            "betas": list(KL_BETAS),
            "beta_choice": BETA_CHOICE,
            "gan": GAN,
            "ldm_size": list(LDM_SIZE),
            "eval_seed": EVAL_SEED,
            "samples": count,
            "guidance_scale": ldm_cfg.sample.guidance_scale,
        },
        "judge": judge,
        "models": models,
        "ldm": {"chosen_vae": chosen, "criterion": criterion, "runs": runs},
        "seconds": seconds,
        "commands": commands,
    }
    results["reading"] = reading(results)
    write_outputs(results, report_dir)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/study", help="every run folder goes here")
    parser.add_argument(
        "--ae-steps", type=int, default=None, help=f"per autoencoder; default {FULL.ae_steps}"
    )
    parser.add_argument("--ldm-steps", type=int, default=None, help=f"per LDM; default {FULL.ldm_steps}")
    parser.add_argument("--quick", action="store_true", help="a few steps everywhere; report into --out")
    args = parser.parse_args()
    try:
        run_study(args)
    except ConfigError as error:
        print(f"study: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
