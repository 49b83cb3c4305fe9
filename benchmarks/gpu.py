"""The accelerator benchmark: one command, under 8 minutes on one H100/H200, writing JSON and a markdown
table.

    python benchmarks/gpu.py                        # CUDA: kl-f8 at 256 px, ldm-kl-f8 on 32x32x4, bf16
    python benchmarks/gpu.py --device cpu --tiny    # every section at toy sizes: proves the script on a CPU

Sections, most telling first; each measurement (and each batch size tried) runs in a process of its own,
so every memory peak is its own and nothing carries over; the report is rewritten after each one, so a
failed or killed section leaves the others on disk. Whatever would overrun `--budget-seconds` is stopped
or not started and recorded as skipped, with the reason:

1. peak: the dense matmul TFLOP/s of this device (bf16 on CUDA, fp32 on CPU), the unit of every MFU;
2. encode: `ldm-vae encode` images/s in bf16 and fp32 (data loading included); its store feeds train-ldm;
3. train-ae and train-ldm, eager, at the largest power-of-two batch that fits (tried largest first, one
   process each): images (latents)/s, achieved TFLOP/s and MFU as the jobs log them (FLOPs counted with
   FlopCounterMode), peak memory of the training steps;
4. sampling: LatentDiffusionPipeline, 50 DDIM steps, batch 64, bf16 weights, no guidance;
5. gradient checkpointing: peak memory and speed of both jobs at the eager batch;
6. channels_last, torch.compile and both, for both jobs at the eager batch.

Each training measurement is the real job (`train()` of train-ae / train-ldm) run for warm-up + timed steps
(warm-up covers the FLOP-counting step and torch.compile's compilation); the benchmark stops it after its
last timed log, before the final checkpoint, export and report, which it does not time. train-ae runs its
full step from step 0: LPIPS, the PatchGAN with its adaptive weight, EMA. All weights are random, LPIPS's
too (written to temporary files): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

# How to run it on a machine without network access whose Python has torch, torchvision, accelerate,
# transformers and the rest but not diffusers (nor webdataset/braceexpand, which `ldm_vae.data` imports).
LENT_MACHINE = """\
on a lent machine (no network, no diffusers): carry the pure-Python wheels the import path needs
  here:  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
             --implementation cp --platform manylinux2014_x86_64 -d .whl \\
             diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7
  there: python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \\
             .whl/*.whl . && PYTHONPATH=/tmp/site python3 benchmarks/gpu.py --out $OUT/results-gpu.json
       PYTHONPATH=/tmp/site python3 -P -m pytest -q -rs -m gpu tests/test_gpu.py
(`-P` keeps the checkout's ldm_vae/, which lacks ldm_vae.train, from hiding the installed one.)
(`.` installs ldm-vae itself: `ldm_vae.train` and `ldm_vae.pipelines` exist only once installed.)"""

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
    "warmup_steps": 4,  # step 0 counts FLOPs (eagerly, also when compiled), step 1 compiles, 2-3 settle
    "timed_steps": 8,  # a multiple of warmup_steps: logs every warmup_steps steps
    "num_workers": 8,
    "peak_seconds": 1.0,
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
    "warmup_steps": 2,
    "timed_steps": 2,
    "num_workers": 0,
    "peak_seconds": 0.3,
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
# Training settings, each against the same eager baseline (the presets' own flags are overridden:
# ldm-kl-f8 turns channels_last on).
BASELINE = ["train.use_channels_last=false", "train.use_compile=false", "train.gradient_checkpointing=false"]
SETTINGS = {
    "eager": [],
    "gradient_checkpointing": ["train.gradient_checkpointing=true"],
    "channels_last": ["train.use_channels_last=true"],
    "compile": ["train.use_compile=true"],
    "channels_last+compile": ["train.use_channels_last=true", "train.use_compile=true"],
}
JOBS = {"train_ae": "images", "train_ldm": "latents"}  # report key -> what the job's throughput counts


# ---------------------------------------------------------------------------------------------------
# Measurements, each run in a child process (`--child SPEC`): one JSON object on the last stdout line


def peak_memory() -> dict[str, float]:
    """This process's peak: CUDA memory allocated and reserved by torch, or the CPU's resident set."""
    if torch.cuda.is_available():
        return {
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30,
        }
    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def measure_peak(spec: dict) -> dict:
    """The dense matmul peak, and what the report says about the device."""
    from ldm_vae.training.flops import PEAK_MATMUL_DTYPE, measure_peak_tflops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "tflops": measure_peak_tflops(device, seconds=spec["seconds"]),
        "dtype": str(PEAK_MATMUL_DTYPE[device]).removeprefix("torch."),
        "torch": torch.__version__,
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        return {
            **result,
            "device": properties.name,
            "memory_gb": properties.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "capability": f"{properties.major}.{properties.minor}",
        }
    device_name = platform.processor() or platform.machine()
    return {**result, "device": device_name, "threads": torch.get_num_threads()}


class TimedStepsDone(Exception):
    """The job logged its last timed step: the benchmark has what it measures."""


@contextmanager
def stopping_after(last_step: int) -> Iterator[None]:
    """Let the job run unchanged, and stop it right after it logs `last_step`, before its final
    checkpoint, export and report (seconds to minutes of disk work at full size, none of it timed)."""
    from ldm_vae.training.run import TrainingRun

    log = TrainingRun.log

    def log_then_stop(run: TrainingRun, scalars: dict[str, float]) -> None:
        log(run, scalars)
        if run.progress.step >= last_step:
            raise TimedStepsDone

    TrainingRun.log = log_then_stop
    try:
        yield
    finally:
        TrainingRun.log = log


def train_job(spec: dict) -> dict:
    """The real `train-ae` / `train-ldm` at `spec["batch"]`; its own log gives throughput, TFLOP/s and
    MFU (harmonic means over the timed log intervals, which hold equal step counts)."""
    from ldm_vae.config import AutoencoderTrainConfig, LDMTrainConfig, load_config
    from ldm_vae.training.tracking import read_stats

    if spec["job"] == "train_ae":
        from ldm_vae.train.autoencoder import train

        config_class = AutoencoderTrainConfig
    else:
        from ldm_vae.train.ldm import train

        config_class = LDMTrainConfig
    samples = JOBS[spec["job"]]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        overrides = [*spec["overrides"], f"run_dir={run_dir}", f"train.batch_size={spec['batch']}"]
        try:
            with stopping_after(spec["warmup_steps"] + spec["timed_steps"]):
                train(load_config(config_class, spec["preset"], overrides))
        except TimedStepsDone:
            pass
        except torch.OutOfMemoryError:
            return {"out_of_memory": True}
        memory = peak_memory()
        rows = [row for row in read_stats(run_dir) if row["step"] > spec["warmup_steps"]]
    rates = [row[f"train/{samples}_per_sec"] for row in rows]
    return {
        "batch_size": spec["batch"],
        f"{samples}_per_sec": statistics.harmonic_mean(rates),
        "interval_rates": rates,  # one per log interval: equal ones show the warm-up was long enough
        "tflops_per_device": statistics.harmonic_mean([row["train/tflops_per_device"] for row in rows]),
        "mfu": statistics.harmonic_mean([row["train/mfu"] for row in rows]),
        "final_loss": rows[-1]["train/loss"],
        **memory,
    }


@torch.no_grad()
def sample(spec: dict) -> dict:
    """LatentDiffusionPipeline with the random ldm preset UNet and the random autoencoder, bf16 weights
    on CUDA (fp32 on CPU), random class labels, no guidance."""
    from diffusers import AutoencoderKL

    from ldm_vae.config import LDMTrainConfig, load_config
    from ldm_vae.data.shapes import SHAPE_KINDS
    from ldm_vae.models import build_noise_scheduler, build_unet
    from ldm_vae.pipelines import LatentDiffusionPipeline
    from ldm_vae.pipelines.sampling import with_scheduler

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = load_config(LDMTrainConfig, spec["preset"], spec["overrides"])
    vae = AutoencoderKL.from_pretrained(spec["autoencoder"])
    side = spec["resolution_px"] // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(cfg.model, (vae.config.latent_channels, side, side), len(SHAPE_KINDS))
    pipe = LatentDiffusionPipeline(vae, unet, build_noise_scheduler(cfg.diffusion), list(SHAPE_KINDS))
    pipe = with_scheduler(pipe, "ddim").to(device, dtype)
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(0)
        return pipe(
            batch_size=spec["batch"], num_inference_steps=steps, generator=generator, output_type="pt"
        )

    run(2)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = run(spec["steps"]).images
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "batch_size": spec["batch"],
        "steps": spec["steps"],
        "dtype": str(dtype).removeprefix("torch."),
        "images_per_sec": spec["batch"] / seconds,
        "images_finite": bool(images.isfinite().all()),
        **peak_memory(),
    }


CHILDREN = {"peak": measure_peak, "train": train_job, "sample": sample}


# ---------------------------------------------------------------------------------------------------
# The run: children within the time budget, the report rewritten after each


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


class Runner:
    """Starts each measurement in a fresh process with what is left of the time budget."""

    def __init__(self, budget_seconds: float, env: dict[str, str], min_start_seconds: float = 10):
        self.deadline = time.perf_counter() + budget_seconds
        self.budget_seconds = budget_seconds
        self.env = env
        self.min_start_seconds = min_start_seconds  # less left than this: a process is not worth starting

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, command: list[str]) -> tuple[int, str, str] | dict:
        """(exit code, stdout, stderr), or {"skipped": why} when the budget ran out before or during it.

        The child leads a process group of its own, so an overrun stops its DataLoader and compile
        workers with it (they would otherwise hold its pipes open, and this process would wait on them).
        """
        if self.left() < self.min_start_seconds:
            return {"skipped": f"not started: the {self.budget_seconds:.0f} s budget was spent"}
        with subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process:
            try:
                stdout, stderr = process.communicate(timeout=self.left())
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                return {"skipped": f"stopped: it would overrun the {self.budget_seconds:.0f} s budget"}
        return process.returncode, stdout, stderr

    def child(self, kind: str, spec: dict) -> dict:
        """One measurement of `CHILDREN[kind]`; its result plus wall seconds (start-up and compile
        included), or {"error": the child's last stderr line} / {"skipped": why}."""
        started = time.perf_counter()
        done = self.run([sys.executable, __file__, "--child", json.dumps({"kind": kind, **spec})])
        if isinstance(done, dict):
            return done
        returncode, stdout, stderr = done
        try:
            result = json.loads(last_line(stdout))
        except json.JSONDecodeError:
            return {"error": last_line(stderr) or f"exit code {returncode}, no result"}
        return {**result, "wall_seconds": time.perf_counter() - started}

    def encode(self, model: Path, out: Path, sizes: dict, precision: list[str]) -> dict:
        """`ldm-vae encode` over builtin shapes; images/s between its start and end barriers."""
        started = time.perf_counter()
        # -P: the checkout's own ldm_vae/ (in the cwd) lacks ldm_vae.train; the installed package has it
        command = [sys.executable, "-P", "-m", "ldm_vae.train.encode", "--model", str(model)]
        command += ["--out", str(out)]
        command += ["--data", "builtin:shapes", "--builtin-samples", str(sizes["encode_images"])]
        command += ["--resolution", str(sizes["resolution_px"]), "--batch-size", str(sizes["encode_batch"])]
        command += ["--shard-size", "1024", "--num-workers", str(sizes["num_workers"]), *precision]
        done = self.run(command)
        if isinstance(done, dict):
            return done
        returncode, _, stderr = done
        if returncode != 0 or not (out / "manifest.json").is_file():
            return {"error": last_line(stderr) or f"exit code {returncode}"}
        manifest = json.loads((out / "manifest.json").read_text())
        return {
            "batch_size": sizes["encode_batch"],
            "images": manifest["num_samples"],
            "images_per_sec": manifest["num_samples"] / manifest["timing"]["seconds"],
            "wall_seconds": time.perf_counter() - started,
        }


def write_random_lpips(folder: Path) -> tuple[Path, Path]:
    """LPIPS weight files in the layouts `LPIPS.from_files` reads (torchvision VGG16, lpips v0.1 heads)."""
    from ldm_vae.losses import LPIPS

    lpips = LPIPS(random_init=True)
    vgg, heads = folder / "vgg16.pth", folder / "lpips_vgg.pth"
    torch.save({f"features.{k}": v for k, v in lpips.features.state_dict().items()}, vgg)
    torch.save({f"lin{i}.model.1.weight": head.weight for i, head in enumerate(lpips.heads)}, heads)
    return vgg, heads


def save_random_autoencoder(preset: str, resolution_px: int, overrides: list[str], folder: Path) -> Path:
    from ldm_vae.config import AutoencoderTrainConfig, load_config
    from ldm_vae.models import build_autoencoder_kl

    cfg = load_config(AutoencoderTrainConfig, preset, [f"data.resolution_px={resolution_px}", *overrides])
    torch.manual_seed(0)
    build_autoencoder_kl(cfg.model, resolution_px).save_pretrained(folder)
    return folder


def training_overrides(sizes: dict, peak_tflops: float, precision: str) -> list[str]:
    """What every timed training run shares: no checkpoints or images inside the run, logs that split
    warm-up from timing, the benchmark's own peak as MFU's unit, one micro-batch per step."""
    steps = sizes["warmup_steps"] + sizes["timed_steps"]
    return [
        f"train.max_steps={steps}",
        f"train.log_every_steps={sizes['warmup_steps']}",
        f"train.checkpoint_every_steps={10 * steps}",
        f"train.image_every_steps={10 * steps}",
        "train.grad_accum_steps=1",
        f"train.peak_tflops={peak_tflops}",
        f"train.mixed_precision={precision}",
        f"data.num_workers={sizes['num_workers']}",
        "optim.warmup_steps=0",
        *BASELINE,
    ]


class Benchmark:
    """The sections in order; the report (JSON + markdown) is rewritten after every one."""

    def __init__(self, sizes: dict, device: str, budget_seconds: float, work: Path, out: Path):
        self.sizes, self.device, self.work, self.out = sizes, device, work, out
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # the jobs take a GPU whenever they see one
        self.runner = Runner(budget_seconds, env)
        self.started = time.perf_counter()
        self.report: dict = {
            "benchmark": "gpu",
            "date": datetime.date.today().isoformat(),
            "tiny": sizes is TINY,
            "budget_seconds": budget_seconds,
            "sizes": sizes,
            "peak": {"skipped": "not reached"},
            "encode": {precision: {"skipped": "not reached"} for precision in ("bf16", "fp32")},
            **{job: {setting: {"skipped": "not reached"} for setting in SETTINGS} for job in JOBS},
            "sample": {"skipped": "not reached"},
        }

    def record(self, section: str, key: str | None, result: dict) -> dict:
        if key is None:
            self.report[section] = result
        else:
            self.report[section][key] = result
        self.save()
        return result

    def save(self) -> None:
        self.report["wall_seconds"] = time.perf_counter() - self.started
        self.report["skipped"] = skipped_sections(self.report)
        self.out.write_text(json.dumps(self.report, indent=2) + "\n")
        self.out.with_suffix(".md").write_text(markdown(self.report))

    def run(self) -> dict:
        sizes = self.sizes
        peak = self.record("peak", None, self.runner.child("peak", {"seconds": sizes["peak_seconds"]}))
        if "tflops" not in peak:
            return self.report  # without the device's peak nothing else is meaningful (or will run)
        self.report["device"], self.report["torch"] = peak["device"], peak["torch"]

        autoencoder = save_random_autoencoder(
            sizes["ae_preset"], sizes["resolution_px"], sizes["ae_model"], self.work / "autoencoder"
        )
        stores = {"bf16": self.work / "latents-bf16", "fp32": self.work / "latents-fp32"}
        for precision, flags in (("bf16", ["--bf16"]), ("fp32", [])):
            self.record("encode", precision, self.runner.encode(autoencoder, stores[precision], sizes, flags))
        store = next((path for path in stores.values() if (path / "manifest.json").is_file()), None)

        vgg, heads = write_random_lpips(self.work)
        precision = "bf16" if self.device == "cuda" else "no"
        common = training_overrides(sizes, peak["tflops"], precision)
        overrides = {
            "train_ae": [
                f"data.resolution_px={sizes['resolution_px']}",
                f"data.builtin_samples={max(256, 4 * max(sizes['ae_batches']))}",
                "data.held_out_samples=8",
                "export.report_samples=4",
                "loss.disc_start_steps=0",  # the whole step: LPIPS, PatchGAN, adaptive weight
                "loss.disc_warmup_steps=0",
                "loss.perceptual_weight=1.0",
                f"loss.lpips_vgg16_path={vgg}",
                f"loss.lpips_heads_path={heads}",
                *common,
                *sizes["ae_model"],
            ],
            "train_ldm": [f"data.latents={store}", "data.flip_probability=0", *common, *sizes["ldm_model"]],
        }
        batches = {"train_ae": sizes["ae_batches"], "train_ldm": sizes["ldm_batches"]}
        presets = {"train_ae": sizes["ae_preset"], "train_ldm": sizes["ldm_preset"]}

        def train(job: str, setting: str, candidates: list[int]) -> dict:
            if job == "train_ldm" and store is None:
                return self.record(job, setting, {"skipped": "no latent store: both encode sections failed"})
            spec = {
                "job": job,
                "preset": presets[job],
                "warmup_steps": sizes["warmup_steps"],
                "timed_steps": sizes["timed_steps"],
                "overrides": [*overrides[job], *SETTINGS[setting]],
            }
            too_large = []  # largest first, each in a fresh process (no fragmented memory)
            for batch in candidates:
                result = self.runner.child("train", {**spec, "batch": batch})
                if not result.get("out_of_memory"):
                    return self.record(job, setting, {**result, "out_of_memory_at": too_large})
                too_large.append(batch)
            return self.record(job, setting, {"error": f"out of memory at every batch size of {candidates}"})

        for job in JOBS:
            train(job, "eager", batches[job])
        sampled = self.runner.child(
            "sample",
            {
                "preset": presets["train_ldm"],
                "overrides": sizes["ldm_model"],
                "autoencoder": str(autoencoder),
                "resolution_px": sizes["resolution_px"],
                "batch": sizes["sample_batch"],
                "steps": sizes["sample_steps"],
            },
        )
        self.record("sample", None, sampled)
        for setting in list(SETTINGS)[1:]:  # the other settings at the eager batch
            for job in JOBS:
                eager = self.report[job]["eager"]
                if "batch_size" in eager:
                    train(job, setting, [eager["batch_size"]])
                else:
                    self.record(job, setting, {"skipped": "eager did not run, so no batch size to use"})
        return self.report


def skipped_sections(report: dict) -> list[str]:
    """'section/setting: reason' for every section that has no measurement."""
    found = []
    for name, value in report.items():
        if not isinstance(value, dict) or name in ("sizes",):
            continue
        rows = value.items() if name in ("encode", *JOBS) else [(None, value)]
        for key, row in rows:
            reason = row.get("skipped") or row.get("error")
            if reason:
                found.append(f"{name}{'/' + key if key else ''}: {reason}")
    return found


# ---------------------------------------------------------------------------------------------------
# Output


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def markdown(report: dict) -> str:
    """The report as the tables the README quotes; sections without a measurement say why."""
    peak = report["peak"]
    sizes = "tiny sizes, a CPU check of the script" if report["tiny"] else "full sizes"
    peak_line = (
        f"Dense {peak['dtype']} matmul peak measured here: **{peak['tflops']:.3g} TFLOP/s** (MFU's unit)."
        if "tflops" in peak
        else f"Matmul peak: {peak.get('skipped') or peak.get('error')}."
    )
    lines = [
        f"# Accelerator benchmark: {report.get('device', '?')}, {report['date']}",
        "",
        f"torch {report.get('torch', '?')}; {sizes}; {report['wall_seconds']:.0f} s. {peak_line}",
        "",
        "| job | setting | batch | samples/s | TFLOP/s | MFU | peak memory (GB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for job, samples in JOBS.items():
        for setting, row in report[job].items():
            if "batch_size" not in row:
                lines.append(f"| {job} | {setting} | {row.get('skipped') or row.get('error')} | | | | |")
                continue
            lines.append(
                f"| {job} | {setting} | {row['batch_size']} | {number(row[f'{samples}_per_sec'])} | "
                f"{number(row['tflops_per_device'])} | {100 * row['mfu']:.1f}% | "
                f"{number(row['peak_memory_gb'])} |"
            )
    lines += ["", "| stage | setting | batch | images/s |", "|---|---|---|---|"]
    for precision, row in report["encode"].items():
        rate = number(row.get("images_per_sec")) if "images_per_sec" in row else row.get("skipped", "")
        lines.append(f"| encode | {precision} | {row.get('batch_size', '-')} | {rate or row.get('error')} |")
    sampling = report["sample"]
    rate = number(sampling["images_per_sec"]) if "images_per_sec" in sampling else None
    lines.append(
        f"| sample (DDIM, {report['sizes']['sample_steps']} steps) | {sampling.get('dtype', '-')} | "
        f"{sampling.get('batch_size', '-')} | {rate or sampling.get('skipped') or sampling.get('error')} |"
    )
    lines += [
        "",
        "TFLOP/s and MFU count the FLOPs torch dispatches: with gradient checkpointing that includes the "
        "recomputed forward, so compare that setting by samples/s and memory.",
    ]
    if report.get("skipped"):
        lines += ["", "Not measured:", "", *(f"- {line}" for line in report["skipped"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=LENT_MACHINE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--tiny", action="store_true", help="toy presets and sizes (a CPU check)")
    parser.add_argument(
        "--budget-seconds", type=float, default=450, help="wall-clock budget; sections past it are skipped"
    )
    parser.add_argument("--out", default=None, help="JSON path (the table goes beside it as .md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one measurement; JSON on the last line
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec.pop("kind")](spec)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --tiny to check the script")
    try:
        import ldm_vae.train  # noqa: F401  (exists only in an installed ldm-vae)
    except ImportError as error:
        parser.error(f"ldm-vae is not importable ({error}); install it first\n{LENT_MACHINE}")

    sizes = TINY if args.tiny else FULL
    suffix = "cpu-tiny" if args.tiny else args.device
    out = Path(args.out or REPO / "benchmarks" / f"results-gpu-{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        benchmark = Benchmark(sizes, args.device, args.budget_seconds, Path(tmp), out)
        try:
            benchmark.run()
        finally:  # whatever happened, the sections measured so far are on disk
            benchmark.save()
    print(markdown(benchmark.report))


if __name__ == "__main__":
    main()
