"""How much of a demo's figures is the judge: one set of samples scored by judges of several seeds.

The demo's judge is a small classifier trained for a few hundred steps on real images. On samples that sit
between two classes (a rounded triangle, a blob) its verdict depends on which images it saw and on its
initialisation, so one judge's accuracy carries an error of its own on top of the samples' sampling noise.
This rescoring of a finished demo run draws the samples (the demo's seed, guidance sweep and count) and the
held-out reconstructions once, then scores both with `--judges` classifiers trained at the seeds
`seed, seed + 1, ...` (`seed` is the autoencoder's: the first judge is the demo's own, and its figures
must match demo.json's, which is checked unless `--classifier-steps` asks for judges trained otherwise).

    python benchmarks/judge_noise.py [--run-dir runs/demo] [--judges 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, bounded_option, load_config  # noqa: E402
from ldm_vae.errors import ConfigError  # noqa: E402
from ldm_vae.metrics.classifier import judge  # noqa: E402
from ldm_vae.metrics.judge import CLASSIFIER_STEPS, held_out_reconstructions, train_judge  # noqa: E402
from ldm_vae.pipelines.sampling import class_samples, load_pipeline  # noqa: E402
from ldm_vae.train.demo import CLASS_GUIDANCE_SCALES  # noqa: E402

BENCHMARKS = REPO / "benchmarks"


def spread(values: list[float]) -> dict[str, float | list[float]]:
    return {
        "values": values,
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def rescore(run_dir: Path, judges: int, classifier_steps: int | None = None) -> dict:
    """Per-judge figures of `run_dir`'s reconstructions and samples, and their spread across judges;
    judges trained for `classifier_steps` (default: as the demo's was)."""
    if not (run_dir / "demo.json").is_file():
        raise ConfigError(f"--run-dir={str(run_dir)!r}: no demo.json; run `ldm-vae demo` there first")
    demo = json.loads((run_dir / "demo.json").read_text())
    ae_cfg = load_config(AutoencoderTrainConfig, str(run_dir / "autoencoder" / "config.yaml"))
    ldm_cfg = load_config(LDMTrainConfig, str(run_dir / "ldm" / "config.yaml"))
    per_class = demo["samples"]["samples_per_class"]
    demo_steps = demo["samples"].get("classifier_steps", 400)  # recorded since 2026-12-04; 400 before
    classifier_steps = demo_steps if classifier_steps is None else classifier_steps
    pipe = load_pipeline(str(run_dir / "ldm" / "pipeline"))
    scored = {"reconstructions": held_out_reconstructions(ae_cfg, pipe.vae)}  # made once, judged by each
    # the demo's own draw (score_samples: seed + 1), so judge 0 must reproduce demo.json
    scored |= class_samples(pipe, ldm_cfg.sample, per_class, ae_cfg.seed + 1, CLASS_GUIDANCE_SCALES)
    default = f"guidance_{ldm_cfg.sample.guidance_scale:g}"

    rows = []
    for k in range(judges):
        seed = ae_cfg.seed + k
        classifier, real_features, own = train_judge(ae_cfg, classifier_steps, seed)
        row = {"seed": seed, **own}
        row |= {name: judge(classifier, *drawn, real_features) for name, drawn in scored.items()}
        row["ratio_at_default"] = row[default]["accuracy"] / row["reconstructions"]["accuracy"]
        rows.append(row)
        print(
            f"judge seed {seed}: real {own['classifier_real_held_out_accuracy']:.3f}, reconstructions "
            f"{row['reconstructions']['accuracy']:.3f}, {default} {row[default]['accuracy']:.3f} "
            f"({row['ratio_at_default']:.3f}x)",
            flush=True,
        )
    if classifier_steps == demo_steps:  # the demo's own judge: its figures must be demo.json's
        for name in scored:
            if abs(rows[0][name]["accuracy"] - demo["samples"][name]["accuracy"]) > 1e-9:
                raise RuntimeError(f"judge seed {ae_cfg.seed} does not reproduce demo.json's {name} accuracy")

    figures = ["classifier_real_held_out_accuracy", "real_vs_real_frechet", "ratio_at_default"]
    summary = {name: spread([row[name] for row in rows]) for name in figures}
    for name in scored:
        for metric in ("accuracy", "frechet_vs_real"):
            summary[f"{name}.{metric}"] = spread([row[name][metric] for row in rows])
    return {
        "run_dir": str(run_dir),
        "judges": judges,
        "classifier_steps": classifier_steps,
        "samples_per_class": per_class,
        "default_guidance": ldm_cfg.sample.guidance_scale,
        "per_judge": rows,
        "summary": summary,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['judges']} judges (seeds {' '.join(str(row['seed']) for row in result['per_judge'])}) "
        f"on one draw of {result['samples_per_class']} samples per class, `{result['run_dir']}`",
        "",
        "| figure | mean | sd | min | max |",
        "|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/demo", help="a finished `ldm-vae demo` run")
    parser.add_argument(
        "--judges",
        type=bounded_option(int, ge=1),
        default=5,
        help="classifiers, at seeds seed, seed + 1, ...",
    )
    parser.add_argument(
        "--classifier-steps",
        type=bounded_option(int, ge=1),
        help=f"judges' training steps (default: the demo's; now {CLASSIFIER_STEPS})",
    )
    parser.add_argument("--out", default=str(BENCHMARKS / "results-judge-noise.json"))
    args = parser.parse_args()
    try:
        result = rescore(Path(args.run_dir), args.judges, args.classifier_steps)
    except ConfigError as error:
        raise SystemExit(f"ldm-vae: {error}") from None
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
