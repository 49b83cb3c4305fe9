"""The accelerator benchmark: one command, under 8 minutes on one H100, writing JSON and a markdown table.

    python benchmarks/gpu.py                        # CUDA: kl-f8 at 256 px, ldm-kl-f8 on 32x32x4, bf16
    python benchmarks/gpu.py --device cpu --tiny    # every section at toy sizes, about a minute on a CPU

Sections, most telling first; each measurement runs in a process of its own (its own memory peak, no
state carried over), and one that would overrun `--budget-seconds` is recorded as skipped:

1. peak: the dense matmul TFLOP/s of this device (bf16 on CUDA, fp32 on CPU), the unit of every MFU;
2. encode: `ldm-vae encode` images/s in bf16 and fp32 (data loading included); the store feeds train-ldm;
3. train-ae and train-ldm, eager, at the largest power-of-two batch that fits: images (latents)/s,
   achieved TFLOP/s and MFU as the jobs log them (FLOPs counted with FlopCounterMode), peak memory;
4. sampling: LatentDiffusionPipeline, 50 DDIM steps, batch 64, bf16 weights, no guidance;
5. gradient checkpointing: peak memory and speed of both jobs at the eager batch;
6. channels_last, torch.compile and both, for both jobs at the eager batch.

train-ae runs its full step from step 0: LPIPS, the PatchGAN with its adaptive weight, EMA. All weights
are random, LPIPS's too (written to temporary files): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

FULL = {
    "ae_preset": "kl-f8",
    "ldm_preset": "ldm-kl-f8",
    "resolution_px": 256,
    "ae_batches": [64, 32, 16, 8, 4, 2],  # tried largest first: the first that fits is the eager batch
    "ldm_batches": [512, 256, 128, 64, 32, 16],
    "encode_images": 2048,
    "encode_batch": 64,
    "sample_batch": 64,
    "sample_steps": 50,
    "warmup_steps": 4,  # steps before timing (compilation, allocator warm-up)
    "timed_steps": 8,
    "num_workers": 8,
    "ae_model": [],  # overrides of the presets' models
    "ldm_model": [],
}
TINY = {
    **FULL,
    "ae_preset": "kl-tiny",
    "ldm_preset": "ldm-tiny",
    "resolution_px": 32,
    "ae_batches": [8],
    "ldm_batches": [16],
    "encode_images": 64,
    "encode_batch": 16,
    "sample_batch": 4,
    "sample_steps": 10,
    "warmup_steps": 1,
    "timed_steps": 2,
    "num_workers": 0,
    # fewer layers than the tiny presets: torch.compile's time on a CPU grows with the number of ops
    "ae_model": [
        "model.block_out_channels=[16,32]",
        "model.norm_num_groups=8",
        "loss.disc_layers=1",
        "loss.disc_channels=16",
    ],
    "ldm_model": [
        "model.block_out_channels=[32,32]",
        "model.layers_per_block=1",
        "model.norm_num_groups=8",
    ],
}
VARIANTS = {  # name -> (train.use_channels_last, train.use_compile)
    "channels_last": (True, False),
    "compile": (False, True),
    "channels_last+compile": (True, True),
}


# ---------------------------------------------------------------------------------------------------
# Measurements, each run in a child process (`--child SPEC`)


def peak_memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak


def free_memory() -> None:
    """After an out-of-memory try: drop what it held, so the next (smaller) batch starts clean."""
    import gc

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def train_job(spec: dict) -> dict:
    """The real `train-ae` / `train-ldm` at the largest batch of `spec["batches"]` that fits; its own log
    gives throughput, TFLOP/s and MFU (harmonic means over the timed log intervals: equal step counts)."""
    from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, load_config
    from ldm_vae.training.tracking import read_stats

    if spec["job"] == "ae":
        from ldm_vae.train.autoencoder import train

        config_class, samples_name = AutoencoderTrainConfig, "images"
    else:
        from ldm_vae.train.ldm import train

        config_class, samples_name = LDMTrainConfig, "latents"
    for batch in spec["batches"]:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            overrides = [*spec["overrides"], f"run_dir={run_dir}", f"train.batch_size={batch}"]
            if spec["job"] == "ae":  # enough images for any batch besides the held-out ones
                overrides.append(f"data.builtin_samples={max(256, 4 * batch)}")
            try:
                train(load_config(config_class, spec["preset"], overrides))
            except torch.OutOfMemoryError:
                free_memory()
                continue
            rows = [row for row in read_stats(run_dir) if row["step"] > spec["warmup_steps"]]
        return {
            "batch_size": batch,
            f"{samples_name}_per_sec": statistics.harmonic_mean(
                [row[f"train/{samples_name}_per_sec"] for row in rows]
            ),
            "tflops_per_device": statistics.harmonic_mean([row["train/tflops_per_device"] for row in rows]),
            "mfu": statistics.harmonic_mean([row["train/mfu"] for row in rows]),
            "peak_memory_gb": peak_memory_gb(),
        }
    return {"error": f"no batch size of {spec['batches']} fits in memory"}


@torch.no_grad()
def sample(spec: dict) -> dict:
    """LatentDiffusionPipeline with ldm-kl-f8's random UNet and the random autoencoder, bf16 weights."""
    from diffusers import AutoencoderKL

    from ldm_vae.config import LDMTrainConfig, load_config
    from ldm_vae.data.shapes import SHAPE_KINDS
    from ldm_vae.models import build_noise_scheduler, build_unet
    from ldm_vae.pipelines import LatentDiffusionPipeline
    from ldm_vae.pipelines.sampling import with_scheduler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = load_config(LDMTrainConfig, spec["preset"], [])
    vae = AutoencoderKL.from_pretrained(spec["autoencoder"])
    side = spec["resolution_px"] // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(cfg.model, (vae.config.latent_channels, side, side), len(SHAPE_KINDS))
    pipe = LatentDiffusionPipeline(vae, unet, build_noise_scheduler(cfg.diffusion), list(SHAPE_KINDS))
    pipe = with_scheduler(pipe, "ddim").to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int) -> None:
        generator = torch.Generator(device).manual_seed(0)
        pipe(batch_size=spec["batch"], num_inference_steps=steps, generator=generator, output_type="pt")

    run(2)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(spec["steps"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "batch_size": spec["batch"],
        "steps": spec["steps"],
        "dtype": str(dtype).removeprefix("torch."),
        "images_per_sec": spec["batch"] / seconds,
        "peak_memory_gb": peak_memory_gb(),
    }


CHILDREN = {"train": train_job, "sample": sample}


# ---------------------------------------------------------------------------------------------------
# The run: set up random models and a latent store, then the sections in order, within the budget


class Runner:
    """Starts each measurement in a fresh process with what is left of the time budget."""

    def __init__(self, budget_seconds: float, env: dict[str, str]):
        self.deadline = time.perf_counter() + budget_seconds
        self.budget_seconds = budget_seconds
        self.env = env

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, command: list[str]) -> subprocess.CompletedProcess | dict:
        """The finished process, or {"skipped": why} when the budget ran out before or during it."""
        if self.left() < 10:
            return {"skipped": f"not started: the {self.budget_seconds:.0f} s budget was spent"}
        try:
            return subprocess.run(
                command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=self.left()
            )
        except subprocess.TimeoutExpired:
            return {"skipped": f"stopped: it would overrun the {self.budget_seconds:.0f} s budget"}

    def child(self, kind: str, spec: dict) -> dict:
        started = time.perf_counter()
        done = self.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})])
        if isinstance(done, dict):
            return done
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {**result, "wall_seconds": time.perf_counter() - started}  # start-up and compile included

    def encode(self, model: Path, out: Path, sizes: dict, precision: list[str]) -> dict:
        """`ldm-vae encode` over builtin shapes; images/s between its start and end barriers."""
        command = [sys.executable, "-m", "ldm_vae.train.encode", "--model", str(model), "--out", str(out)]
        command += ["--data", "builtin:shapes", "--builtin-samples", str(sizes["encode_images"])]
        command += ["--resolution", str(sizes["resolution_px"]), "--batch-size", str(sizes["encode_batch"])]
        command += ["--shard-size", "1024", "--num-workers", str(sizes["num_workers"]), *precision]
        done = self.run(command)
        if isinstance(done, dict):
            return done
        if done.returncode != 0:
            return {"error": done.stderr.strip().splitlines()[-1]}
        manifest = json.loads((out / "manifest.json").read_text())
        return {
            "batch_size": sizes["encode_batch"],
            "images": manifest["num_samples"],
            "images_per_sec": manifest["num_samples"] / manifest["timing"]["seconds"],
        }


def write_random_lpips(folder: Path) -> tuple[Path, Path]:
    """LPIPS weight files in the layouts `LPIPS.from_files` reads (torchvision VGG16, lpips v0.1 heads)."""
    from ldm_vae.losses import LPIPS

    lpips = LPIPS(random_init=True)
    vgg, heads = folder / "vgg16.pth", folder / "lpips_vgg.pth"
    torch.save({f"features.{k}": v for k, v in lpips.features.state_dict().items()}, vgg)
    torch.save({f"lin{i}.model.1.weight": head.weight for i, head in enumerate(lpips.heads)}, heads)
    return vgg, heads


def save_random_autoencoder(preset: str, resolution_px: int, folder: Path) -> Path:
    from ldm_vae.config import AutoencoderTrainConfig, load_config
    from ldm_vae.models import build_autoencoder_kl

    cfg = load_config(AutoencoderTrainConfig, preset, [f"data.resolution_px={resolution_px}"])
    torch.manual_seed(0)
    build_autoencoder_kl(cfg.model, resolution_px).save_pretrained(folder)
    return folder


def training_overrides(sizes: dict, peak_tflops: float, extra: list[str]) -> list[str]:
    """What every timed training run shares: no checkpoints or images inside the timed steps, logs that
    split warm-up from timing, the benchmark's own peak as MFU's unit, one micro-batch per step."""
    steps = sizes["warmup_steps"] + sizes["timed_steps"]
    return [
        f"train.max_steps={steps}",
        f"train.log_every_steps={sizes['warmup_steps']}",
        f"train.checkpoint_every_steps={10 * steps}",
        f"train.image_every_steps={10 * steps}",
        "train.grad_accum_steps=1",
        f"train.peak_tflops={peak_tflops}",
        "optim.warmup_steps=0",
        *extra,
    ]


def run_benchmark(sizes: dict, device: str, budget_seconds: float, work: Path) -> dict:
    from ldm_vae.training.flops import PEAK_MATMUL_DTYPE, measure_peak_tflops

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the jobs take a GPU whenever they see one
    runner = Runner(budget_seconds, env)
    peak = measure_peak_tflops(device, seconds=1.0)
    report: dict = {"peak": {"tflops": peak, "dtype": str(PEAK_MATMUL_DTYPE[device]).removeprefix("torch.")}}

    autoencoder = save_random_autoencoder(sizes["ae_preset"], sizes["resolution_px"], work / "autoencoder")
    report["encode"] = {
        "bf16": runner.encode(autoencoder, work / "latents-bf16", sizes, ["--bf16"]),
        "fp32": runner.encode(autoencoder, work / "latents-fp32", sizes, []),
    }
    vgg, heads = write_random_lpips(work)
    precision = "bf16" if device == "cuda" else "no"
    ae_overrides = [
        f"data.resolution_px={sizes['resolution_px']}",
        f"data.num_workers={sizes['num_workers']}",
        "data.held_out_samples=8",
        "export.scaling_samples=8",
        "export.report_samples=4",
        "loss.disc_start_steps=0",  # the whole step: LPIPS, PatchGAN, adaptive weight
        "loss.disc_warmup_steps=0",
        "loss.perceptual_weight=1.0",
        f"loss.lpips_vgg16_path={vgg}",
        f"loss.lpips_heads_path={heads}",
        f"train.mixed_precision={precision}",
        *sizes["ae_model"],
    ]
    ldm_overrides = [
        f"data.latents={work / 'latents-bf16'}",
        f"data.num_workers={sizes['num_workers']}",
        "data.flip_probability=0",
        "sample.per_class=1",
        "sample.num_inference_steps=2",
        f"train.mixed_precision={precision}",
        *sizes["ldm_model"],
    ]
    jobs = {
        "train_ae": ("ae", sizes["ae_preset"], sizes["ae_batches"], ae_overrides),
        "train_ldm": ("ldm", sizes["ldm_preset"], sizes["ldm_batches"], ldm_overrides),
    }

    def train(name: str, batches: list[int], extra: list[str]) -> dict:
        job, preset, _, overrides = jobs[name]
        spec = {
            "job": job,
            "preset": preset,
            "batches": batches,
            "warmup_steps": sizes["warmup_steps"],
            "overrides": [*overrides, *training_overrides(sizes, peak, extra)],
        }
        return runner.child("train", spec)

    for name, (_, _, batches, _) in jobs.items():
        report[name] = {"eager": train(name, batches, [])}
    report["sample"] = runner.child(
        "sample",
        {
            "preset": sizes["ldm_preset"],
            "autoencoder": str(autoencoder),
            "resolution_px": sizes["resolution_px"],
            "batch": sizes["sample_batch"],
            "steps": sizes["sample_steps"],
        },
    )
    for name in jobs:  # the other settings at the eager batch
        eager = report[name]["eager"]
        if "batch_size" not in eager:
            continue
        report[name]["gradient_checkpointing"] = train(
            name, [eager["batch_size"]], ["train.gradient_checkpointing=true"]
        )
    for variant, (channels_last, compiled) in VARIANTS.items():
        for name in jobs:
            eager = report[name]["eager"]
            if "batch_size" not in eager:
                continue
            flags = [f"train.use_channels_last={str(channels_last).lower()}"]
            flags.append(f"train.use_compile={str(compiled).lower()}")
            report[name][variant] = train(name, [eager["batch_size"]], flags)
    return report


# ---------------------------------------------------------------------------------------------------
# Output


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def markdown(report: dict) -> str:
    """The report as the tables the README quotes."""
    peak = report["peak"]
    sizes = "tiny sizes, a CPU check of the script" if report["tiny"] else "full sizes"
    lines = [
        f"# Accelerator benchmark: {report['device']}, {report['date']}",
        "",
        f"torch {report['torch']}; {sizes}. "
        f"Dense {peak['dtype']} matmul peak measured here: **{peak['tflops']:.3g} TFLOP/s** (MFU's unit).",
        "",
        "| job | setting | batch | samples/s | TFLOP/s | MFU | peak memory (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for job in ("train_ae", "train_ldm"):
        for setting, row in report[job].items():
            if "batch_size" not in row:
                lines.append(f"| {job} | {setting} | {row.get('skipped') or row.get('error')} | | | | |")
                continue
            rate = row.get("images_per_sec", row.get("latents_per_sec"))
            tflops, memory = number(row["tflops_per_device"]), number(row["peak_memory_gb"])
            lines.append(
                f"| {job} | {setting} | {row['batch_size']} | {number(rate)} | {tflops} | "
                f"{100 * row['mfu']:.1f}% | {memory} |"
            )
    lines += ["", "| stage | setting | batch | images/s |", "|---|---|---|---|"]
    for precision, row in report["encode"].items():
        lines.append(
            f"| encode | {precision} | {row.get('batch_size', '-')} | {number(row.get('images_per_sec'))} |"
        )
    sampling = report["sample"]
    lines.append(
        f"| sample (DDIM, {sampling.get('steps', '-')} steps) | {sampling.get('dtype', '-')} | "
        f"{sampling.get('batch_size', '-')} | {number(sampling.get('images_per_sec'))} |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--tiny", action="store_true", help="toy presets and sizes (a CPU check)")
    parser.add_argument("--budget-seconds", type=float, default=450, help="sections past it are skipped")
    parser.add_argument("--out", default=None, help="JSON path (the table goes beside it as .md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement; JSON on the last line
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec.pop("kind")](spec)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --tiny to check the script")

    started = time.perf_counter()
    sizes = TINY if args.tiny else FULL
    with tempfile.TemporaryDirectory() as tmp:
        sections = run_benchmark(sizes, args.device, args.budget_seconds, Path(tmp))
    report = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "tiny": args.tiny,
        "sizes": sizes,
        **sections,
        "wall_seconds": time.perf_counter() - started,
    }
    suffix = "cpu-tiny" if args.tiny else args.device
    out = Path(args.out or REPO / "benchmarks" / f"results-gpu-{suffix}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
