"""Encode throughput, and what the latent store saves a diffusion model's data path. Prints JSON.

1. `ldm-vae encode` images/s for the kl-tiny and kl-f8 architectures (random weights: speed does not
   depend on them), one process against two (torchrun, gloo, one thread each on CPU).
2. One epoch of a latent diffusion model's *input pipeline*: reading posterior moments from the store
   and sampling z, against decoding images and encoding them with the same autoencoder on the fly. The
   diffusion model's own compute is the same on both sides and is not included (it arrives with the
   LDM issue), so the ratio is the data-path speed-up.

    python benchmarks/encode.py [--tiny-images 2048] [--f8-images 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ldm_vae.config import AutoencoderTrainConfig, load_config  # noqa: E402
from ldm_vae.data import build_dataset  # noqa: E402
from ldm_vae.latents.reader import LatentDataset  # noqa: E402
from ldm_vae.models import build_autoencoder_kl  # noqa: E402


def save_random_model(preset: str, resolution: int, folder: Path) -> Path:
    cfg = load_config(AutoencoderTrainConfig, preset, [f"data.resolution_px={resolution}"])
    torch.manual_seed(0)
    build_autoencoder_kl(cfg.model, resolution).save_pretrained(folder)
    return folder


def encode_throughput(model: Path, images: int, processes: int, out: Path, batch_size: int) -> float:
    """images/s between encode's start and end barriers (excludes interpreter and model start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [
        *launcher,
        *("-m", "ldm_vae.train.encode", "--model", str(model), "--data", "builtin:shapes", "--out", str(out)),
        *("--builtin-samples", str(images), "--shard-size", str(max(1, images // 8))),
        *("--batch-size", str(batch_size), "--num-workers", "1"),
    ]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["num_samples"] / manifest["timing"]["seconds"]


def epoch_seconds_from_store(store: Path, batch_size: int) -> float:
    loader = DataLoader(
        LatentDataset(store, mode="sample"), batch_size=batch_size, shuffle=True, num_workers=1
    )
    start = time.perf_counter()
    for latents, _ in loader:
        latents.sum()  # touch the batch
    return time.perf_counter() - start


@torch.no_grad()
def epoch_seconds_on_the_fly(model: Path, images: int, resolution: int, batch_size: int) -> float:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(model).eval()
    dataset = build_dataset("builtin:shapes", resolution, images, 0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1)
    start = time.perf_counter()
    for pixels, _ in loader:
        posterior = vae.encode(pixels).latent_dist
        (posterior.mean + posterior.std * torch.randn_like(posterior.mean)) * vae.config.scaling_factor
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-images", type=int, default=2048, help="images for kl-tiny (32 px)")
    parser.add_argument("--f8-images", type=int, default=32, help="images for kl-f8 (256 px)")
    args = parser.parse_args()
    report: dict[str, object] = {
        "benchmark": "encode",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        throughput = {}
        for name, preset, resolution, images, batch in (
            ("kl-tiny@32px", "kl-tiny", 32, args.tiny_images, 64),
            ("kl-f8@256px", "kl-f8", 256, args.f8_images, 4),
        ):
            model = save_random_model(preset, resolution, work / f"{preset}-model")
            throughput[name] = {
                f"{p}_process_images_per_sec": round(
                    encode_throughput(model, images, p, work / f"{preset}-{p}", batch), 2
                )
                for p in (1, 2)
            }
        report["encode_throughput"] = throughput

        for name, preset, resolution, images, batch in (
            ("kl_tiny_32px", "kl-tiny", 32, args.tiny_images, 64),
            ("kl_f8_256px", "kl-f8", 256, args.f8_images, 4),
        ):
            store_sec = epoch_seconds_from_store(work / f"{preset}-1", batch)
            fly_sec = epoch_seconds_on_the_fly(work / f"{preset}-model", images, resolution, batch)
            report[f"epoch_input_pipeline_{name}"] = {
                "images": images,
                "from_store_sec": round(store_sec, 3),
                "on_the_fly_sec": round(fly_sec, 3),
                "speedup": round(fly_sec / store_sec, 1),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
