"""An image folder to WebDataset shards: `ldm-vae pack FOLDER OUT --shard-size N`.

Class folders become `cls` (with the class name in `json`), caption sidecars and metadata.jsonl captions
become `txt`; images are copied byte for byte, shuffled across shards with `--seed`. An interrupted pack
resumes: a rerun keeps the shards already written and writes the rest, byte-identical to one run.
Read the result with `data.source=wds:OUT`.
"""

from __future__ import annotations

import argparse

from ldm_vae.config import bounded_option
from ldm_vae.data.pack import pack_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="an image folder (class sub-folders, optional caption sidecars)")
    parser.add_argument("out", help="output folder for shard-NNNNN.tar (new, or a partial pack of the same)")
    parser.add_argument(
        "--shard-size", type=bounded_option(int, ge=1), default=10000, help="samples per shard"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the folder's sorted order")


def run(args: argparse.Namespace) -> int:
    plan = pack_folder(args.folder, args.out, args.shard_size, args.seed, shuffle=not args.no_shuffle)
    print(
        f"packed {plan['num_samples']} images of {len(plan['classes'])} classes into {plan['num_shards']} "
        f"shards in {args.out} ({len(plan['skipped'])} unreadable files left out)"
    )
    return 0
