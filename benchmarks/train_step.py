"""Speed and memory of `train-ae`'s step against a minimal hand-written PyTorch loop doing the same math.

Both run the same model (the chosen preset), the same batch size and the same data pipeline, with the
PatchGAN on from step 0: autoencoder forward, L1 + KL, frozen-D generator term with the adaptive
weight, one backward, AdamW step, discriminator hinge step on detached reconstructions, EMA update.
Each side runs in its own process so peak memory is its own. Prints one JSON object.

    python benchmarks/train_step.py                       # CPU, kl-tiny at 32 px
    python benchmarks/train_step.py --mixed-precision bf16 --channels-last --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(REPO))


def job_overrides(args: argparse.Namespace, run_dir: str) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.warmup_steps + args.steps}",
        f"train.log_every_steps={args.warmup_steps}",
        f"train.mixed_precision={args.mixed_precision}",
        f"train.use_channels_last={str(args.channels_last).lower()}",
        f"train.use_compile={str(args.compile).lower()}",
        "train.checkpoint_every_steps=1000000",
        "train.image_every_steps=1000000",
        "loss.disc_start_steps=0",
        "loss.disc_warmup_steps=0",
        "optim.warmup_steps=0",
        "export.scaling_samples=8",
        "data.held_out_samples=8",
    ]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_ours(args: argparse.Namespace) -> dict[str, float]:
    """The real job; images/s from its own log, over the intervals after warm-up."""
    from ldm_vae.config import AutoencoderTrainConfig, load_config
    from ldm_vae.train.autoencoder import train
    from ldm_vae.training.tracking import read_stats

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(AutoencoderTrainConfig, args.preset, job_overrides(args, run_dir))
        train(cfg)
        rows = [row for row in read_stats(Path(run_dir)) if row["step"] > args.warmup_steps]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tflops = statistics.harmonic_mean([r["train/tflops_per_device"] for r in rows])
    mfu = statistics.harmonic_mean([r["train/mfu"] for r in rows])
    return {
        "images_per_sec": statistics.harmonic_mean(
            [r["train/images_per_sec"] for r in rows]
        ),  # equal intervals
        "peak_memory_mb": peak_memory_mb(device),
        # as the job logs them: counted FLOPs over step time, against the matmul peak it measured at start
        "tflops_per_device": tflops,
        "mfu": mfu,
        "peak_tflops": tflops / mfu,
    }


def run_hand_loop(args: argparse.Namespace) -> dict[str, float]:
    """What a careful user would write by hand in plain PyTorch, single process."""
    from diffusers.training_utils import EMAModel
    from torch.utils.data import DataLoader

    from ldm_vae.config import AutoencoderTrainConfig, load_config
    from ldm_vae.data import build_dataset
    from ldm_vae.losses import (
        PatchDiscriminator,
        adaptive_weight,
        generator_adversarial_loss,
        hinge_discriminator_loss,
    )
    from ldm_vae.losses.kl import kl_to_standard_normal
    from ldm_vae.models import build_autoencoder_kl

    cfg = load_config(AutoencoderTrainConfig, args.preset, job_overrides(args, "unused"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder_kl(cfg.model, cfg.data.resolution_px).to(device, memory_format=memory_format)
    disc = PatchDiscriminator(3, cfg.loss.disc_channels, cfg.loss.disc_layers).to(
        device, memory_format=memory_format
    )
    betas = tuple(cfg.optim.adam_betas)
    opt_g = torch.optim.AdamW(
        vae.parameters(), lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay
    )
    opt_d = torch.optim.AdamW(
        disc.parameters(), lr=cfg.optim.lr, betas=betas, weight_decay=cfg.optim.weight_decay
    )
    ema = EMAModel(vae.parameters(), decay=cfg.train.ema_decay)
    ema.to(device)
    forward = torch.compile(vae) if args.compile else vae
    dataset = build_dataset(cfg.data.source, cfg.data.resolution_px, cfg.data.builtin_samples, cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        drop_last=True,
    )
    batches = iter(loader)
    pixels = 3 * cfg.data.resolution_px**2
    clip = cfg.optim.grad_clip or float("inf")

    def step() -> None:
        nonlocal batches
        try:
            images, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, _ = next(batches)
        images = images.to(device).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            posterior = forward.encode(images).latent_dist
            latents = posterior.mean + posterior.std * torch.randn_like(posterior.mean)
            reconstruction = forward.decode(latents).sample
            disc.requires_grad_(False)
            g_adv = generator_adversarial_loss(disc(reconstruction))
            disc.requires_grad_(True)
        nll = (reconstruction.float() - images).abs().mean()
        kl = (
            kl_to_standard_normal(posterior.mean.float(), posterior.logvar.float()).sum(dim=(1, 2, 3)).mean()
            / pixels
        )
        weight = adaptive_weight(nll, g_adv, vae.decoder.conv_out.weight, cfg.loss.adaptive_weight_max)
        loss = nll + cfg.loss.kl_weight * kl + cfg.loss.disc_weight * weight * g_adv
        loss.backward()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits_real, logits_fake = disc(torch.cat([images, reconstruction.detach()])).chunk(2)
        hinge_discriminator_loss(logits_real, logits_fake).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), clip)
        opt_g.step()
        torch.nn.utils.clip_grad_norm_(disc.parameters(), clip)
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        ema.step(vae.parameters())
        loss.item()  # the job reads losses every step too (non-finite check)

    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "images_per_sec": args.steps * cfg.train.batch_size / elapsed,
        "peak_memory_mb": peak_memory_mb(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="kl-tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the fastest is reported")
    parser.add_argument("--side", choices=["ours", "hand_loop"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:  # child process: one side, JSON on the last line
        result = run_ours(args) if args.side == "ours" else run_hand_loop(args)
        print(json.dumps(result))
        return

    runs: dict[str, list[dict[str, float]]] = {"hand_loop": [], "ours": []}
    for _ in range(args.repeats):  # alternate the sides so drifting machine load hits both alike
        for side in runs:
            command = [sys.executable, __file__, *sys.argv[1:], "--side", side]
            completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            runs[side].append(json.loads(completed.stdout.strip().splitlines()[-1]))
    results = {side: max(results, key=lambda r: r["images_per_sec"]) for side, results in runs.items()}
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else platform.processor() or platform.machine()
    )
    overhead = 1 - results["ours"]["images_per_sec"] / results["hand_loop"]["images_per_sec"]
    report = {
        "benchmark": "train_step",
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k != "side"},
        "all_runs_images_per_sec": {
            side: [round(r["images_per_sec"], 2) for r in rs] for side, rs in runs.items()
        },
        **results,
        "throughput_overhead_pct": round(100 * overhead, 2),
        "memory_overhead_pct": round(
            100 * (results["ours"]["peak_memory_mb"] / results["hand_loop"]["peak_memory_mb"] - 1), 2
        ),
        "target_overhead_pct": 10.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
