"""Encode a dataset to latents: `ldm-vae encode --model DIR --data SPEC --out DIR [options]`.

Also `python -m ldm_vae.train.encode ...` under torchrun / accelerate launch. Every process encodes a
contiguous range of whole shards (no padding, no duplicates, no gathering through rank 0) and writes them
itself, atomically; from `wds:` shards, whole input shards, so processes read disjoint files (`plan_shards`).
`--hold-out N` leaves out train-ae's held-out split, so a diffusion model trained on the store never sees
the images it is scored against. Rank 0 writes `manifest.json` when all are done, with the source's
fingerprint and the samples skipped. A rerun with the same arguments (and unchanged data) keeps the shards
whose checksum verifies and encodes the rest. `--verify DIR` re-checks a finished store.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ldm_vae.config import add_image_data_options, bounded_option
from ldm_vae.data import IndexedImageDataset, build_dataset, read_skips, source_columns, train_held_out_split
from ldm_vae.errors import ConfigError
from ldm_vae.latents.writer import (
    DTYPES,
    FORMAT,
    autoencoder_identity,
    caption_rows,
    combine_statistics,
    completed_shard,
    encode_batch,
    file_sha256,
    save_shard,
    shard_name,
    write_json_atomic,
)
from ldm_vae.models import load_autoencoder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_data_options(parser, builtin_samples=8192)
    parser.add_argument("--model", help="a diffusers AutoencoderKL or VQModel folder")
    parser.add_argument("--out", help="output folder (new, or a partial output of the same encode)")
    parser.add_argument(
        "--shard-size", type=bounded_option(int, ge=1), default=4096, help="samples per shard"
    )
    parser.add_argument("--batch-size", type=bounded_option(int, ge=1), default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype")
    parser.add_argument("--flip", action="store_true", help="also store the latents of the flipped image")
    parser.add_argument("--bf16", action="store_true", help="encode under bf16 autocast (storage is --dtype)")
    parser.add_argument(
        "--fp16", action="store_true", help="encode under fp16 autocast; batches that overflow redo in fp32"
    )
    parser.add_argument(
        "--num-workers", type=bounded_option(int, ge=0), default=2, help="DataLoader workers decoding images"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of a builtin dataset and of --hold-out")
    parser.add_argument(
        "--hold-out",
        type=bounded_option(int, ge=0),
        default=0,
        metavar="N",
        help="leave out the N held-out images train-ae sets aside (data.held_out_samples=N at --seed), "
        "so a diffusion model trained on the store never sees the images it is evaluated against",
    )
    parser.add_argument("--verify", metavar="DIR", help="re-check a finished store's counts and checksums")


def encode_finite(
    model: torch.nn.Module, images: torch.Tensor, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], bool]:
    """`encode_batch` under `dtype` autocast (None: fp32), and whether the batch had to be redone in fp32.

    Some VAEs (SDXL's) overflow fp16 in their activations: such a batch comes out inf/NaN and is
    encoded again in fp32, so fp16 stays fast where it works and the store never holds a NaN.
    """
    with torch.autocast(images.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        latents = encode_batch(model, images)
    if dtype is None or all(v.isfinite().all() for v in latents.values() if v.is_floating_point()):
        return latents, False
    latents = encode_batch(model, images)
    if not all(v.isfinite().all() for v in latents.values() if v.is_floating_point()):
        raise ConfigError("--model: its latents are not finite even in fp32; the autoencoder is broken")
    return latents, True


def shard_range(num_shards: int, rank: int, world: int) -> range:
    """Contiguous whole shards for `rank` (the first `num_shards % world` ranks get one more)."""
    per_rank, extra = divmod(num_shards, world)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (rank < extra))


def plan_shards(dataset: Dataset, shard_size: int) -> list[list[range]]:
    """Output shards (ranges of dataset indices) grouped by input shard; processes take whole groups.

    A source stored in shards (`wds:`) keeps them: an output shard never spans two input shards, so each
    process reads only its own input shards. Other sources are cut every `shard_size` samples, and each
    output shard is a group of its own.
    """
    inputs = dataset.shard_ranges() if hasattr(dataset, "shard_ranges") else [range(len(dataset))]
    groups = [
        [range(s, min(s + shard_size, r.stop)) for s in range(r.start, r.stop, shard_size)] for r in inputs
    ]
    return groups if len(groups) > 1 else [[rows] for rows in groups[0]]


def without_held_out(groups: list[list[range]], held_out: set[int]) -> list[list[list[int]]]:
    """The shard plan with the held-out indices taken out (shards shrink, the grouping stays)."""
    kept = [[[i for i in rows if i not in held_out] for rows in group] for group in groups]
    return [[rows for rows in group if rows] for group in kept if any(group)]


def check_output_folder(out: Path, plan: dict) -> None:
    """Refuse a folder that holds something else, or a partial encode of other settings."""
    if not out.exists() or not any(out.iterdir()):
        return
    previous_path = out / "encode.json"
    if not previous_path.is_file():
        raise ConfigError(f"--out={str(out)!r}: not empty and not a partial output of `ldm-vae encode`")
    previous = json.loads(previous_path.read_text())
    for key, value in plan.items():
        if previous.get(key) != value:
            raise ConfigError(
                f"--out={str(out)!r}: was encoded with {key}={previous.get(key)!r}, now {value!r}; "
                "use a new --out or the same arguments"
            )


def encode(args: argparse.Namespace) -> Path:
    for name in ("model", "out"):
        if not getattr(args, name):
            raise ConfigError(f"--{name} is required (or use --verify DIR)")
    if args.bf16 and args.fp16:
        raise ConfigError("--bf16 and --fp16: choose one autocast precision")
    precision = torch.bfloat16 if args.bf16 else (torch.float16 if args.fp16 else None)
    upcast_batches = 0  # fp16 batches redone in fp32 because they overflowed
    state = PartialState(cpu=not torch.cuda.is_available())
    out = Path(args.out)
    model = load_autoencoder(args.model, "--model").to(state.device)
    resolution = args.resolution or int(model.config.sample_size)
    dataset = build_dataset(args.data, resolution, args.builtin_samples, args.seed, **source_columns(args))
    groups = plan_shards(dataset, args.shard_size)
    if args.hold_out:
        try:
            held_out = train_held_out_split(dataset, args.hold_out, args.seed)[1]
        except ConfigError as error:  # it names data.held_out_samples, which --hold-out stands for
            raise ConfigError(f"--hold-out {args.hold_out}: {error}") from None
        groups = without_held_out(groups, set(held_out))
    shards = [rows for group in groups for rows in group]  # output shard i holds dataset[shards[i]]
    data = {"source": args.data, "resolution_px": resolution, "num_samples": len(dataset)}
    if isinstance(dataset, IndexedImageDataset):
        data |= {"fingerprint": dataset.fingerprint, **source_columns(args)}
        dataset.record_skips_to(out / "skipped.jsonl")  # samples replaced because they did not decode
    plan = {
        "format": FORMAT,
        "autoencoder": autoencoder_identity(model, args.model),
        "data": data,
        "shard_size": args.shard_size,
        "storage_dtype": str(DTYPES[args.dtype]).removeprefix("torch."),  # float16, bfloat16, float32
        "flip": args.flip,
    }
    if args.hold_out:
        plan["held_out"] = {"samples": args.hold_out, "seed": args.seed}  # left out of the store
    if state.is_main_process:
        check_output_folder(out, plan)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "encode.json", plan)
    state.wait_for_everyone()
    start = time.perf_counter()

    first_of_group = [0, *itertools.accumulate(len(group) for group in groups)]
    mine = shard_range(len(groups), state.process_index, state.num_processes)  # whole input shards
    mine = range(first_of_group[mine.start], first_of_group[mine.stop])
    todo = [index for index in mine if completed_shard(out, index) is None]
    samples = sum(len(shards[index]) for index in todo)
    bar = tqdm(
        total=samples, unit="img", disable=not state.is_main_process, desc=f"rank 0 of {state.num_processes}"
    )
    for index in todo:
        rows = shards[index]
        loader = DataLoader(Subset(dataset, rows), batch_size=args.batch_size, num_workers=args.num_workers)
        parts: dict[str, list[torch.Tensor]] = {}
        for images, labels in loader:
            images = images.to(state.device)
            batch = {"labels": labels.long()}
            views = {"": images} | ({"_flip": torch.flip(images, dims=[3])} if args.flip else {})
            for suffix, pixels in views.items():
                latents, upcast = encode_finite(model, pixels, precision)
                batch.update({f"{k}{suffix}": v.float().cpu() for k, v in latents.items()})
                upcast_batches += upcast
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
            bar.update(len(images))  # tqdm shows img/s
        tensors = {key: torch.cat(values) for key, values in parts.items()}
        tensors = {k: (v.long() if k.startswith("indices") else v) for k, v in tensors.items()}
        tensors["sample_index"] = torch.tensor(list(rows), dtype=torch.long)
        if callable(getattr(dataset, "caption", None)):  # text-to-image: captions ride along with the latents
            tensors["captions"] = caption_rows([dataset.caption(i) for i in rows])
        save_shard(out, index, tensors, DTYPES[args.dtype])
    bar.close()
    if upcast_batches:
        print(f"rank {state.process_index}: {upcast_batches} batches overflowed fp16, redone in fp32")
    state.wait_for_everyone()
    if state.is_main_process:
        seconds = time.perf_counter() - start  # all ranks' shards: the span between the two barriers
        timing = {"seconds": seconds, "shards_encoded_now": len(todo)}
        write_manifest(out, plan, len(shards), dataset, timing)
    state.wait_for_everyone()
    return out


def write_manifest(out: Path, plan: dict, num_shards: int, dataset: Dataset, timing: dict) -> None:
    sidecars = []
    for index in range(num_shards):
        sidecar = completed_shard(out, index)
        if sidecar is None:
            raise RuntimeError(f"{out / shard_name(index)}: missing or corrupt after encoding")
        sidecars.append(sidecar)
    with safe_open(out / shard_name(0), framework="pt") as first:
        key = "mean" if "mean" in first.keys() else "latents"
        latent_shape = list(first.get_slice(key).get_shape()[1:])
    manifest = {
        **plan,
        "kind": "kl" if plan["autoencoder"]["class"] == "AutoencoderKL" else "vq",
        "latent_shape": latent_shape,
        "num_samples": sum(s["count"] for s in sidecars),
        "classes": list(getattr(dataset, "classes", [])),
        "captions": "captioned" in sidecars[0],  # shards hold `captions` (LatentDataset(captions=True))
        "captioned_samples": sum(s.get("captioned", 0) for s in sidecars),  # of them, non-empty ones
        "shards": [{"file": s["file"], "count": s["count"], "sha256": s["sha256"]} for s in sidecars],
        "scaling": combine_statistics(sidecars),
        # left out when indexing, then replaced when read because they did not decode (named once each)
        "skipped": [
            list(item) for item in [*getattr(dataset, "skipped", []), *read_skips(out / "skipped.jsonl")]
        ],
        "timing": timing,  # of the last invocation; shards_encoded_now is rank 0's
    }
    write_json_atomic(out / "manifest.json", manifest)
    print(
        f"encoded {manifest['num_samples']} samples in {num_shards} shards to {out}; "
        f"scaling_factor {manifest['scaling']['scaling_factor']:.5f}"
    )


def verify(folder: str) -> list[str]:
    """Every shard of the manifest: present, the right row count, the recorded sha256. One line a problem."""
    root = Path(folder)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"--verify={folder!r}: no readable manifest.json ({type(error).__name__})"
        ) from None
    problems = []
    for shard in manifest["shards"]:
        path = root / shard["file"]
        if not path.is_file():
            problems.append(f"{shard['file']}: missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{shard['file']}: sha256 mismatch (the file changed after encoding)")
            continue
        with safe_open(path, framework="pt") as handle:
            rows = {handle.get_slice(key).get_shape()[0] for key in handle.keys()}
        if rows != {shard["count"]}:
            problems.append(f"{shard['file']}: holds {sorted(rows)} rows, manifest says {shard['count']}")
    if sum(s["count"] for s in manifest["shards"]) != manifest["num_samples"]:
        problems.append(f"manifest.json: shard counts do not add up to num_samples={manifest['num_samples']}")
    return problems


def run(args: argparse.Namespace) -> int:
    """`ldm-vae encode`: encode, or with --verify check an existing store."""
    if not args.verify:
        encode(args)
        return 0
    problems = verify(args.verify)
    for problem in problems:
        print(f"ldm-vae: verify: {problem}", file=sys.stderr)
    print(f"{args.verify}: {'FAILED' if problems else 'OK'}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    from ldm_vae.train.cli import main as cli_main

    return cli_main(["encode", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
