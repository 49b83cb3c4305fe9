"""Decode every sample of a source up front: `ldm-vae check-data SOURCE [--json FILE]`.

Training and encoding index a source without decoding it and replace an unreadable sample when they meet
it; this job finds them all first. It prints one summary line (and the first unreadable samples by name),
writes the full report as JSON when asked, and exits 1 when any sample does not decode.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ldm_vae.config import add_column_options, bounded_option
from ldm_vae.data import IndexedImageDataset, build_dataset, source_columns
from ldm_vae.data.check import find_unreadable
from ldm_vae.data.indexed import listed_skips
from ldm_vae.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="an image folder, hf:NAME_OR_PATH[:split] or wds:PATTERN")
    parser.add_argument(
        "--resolution", type=bounded_option(int, ge=8), default=256, help="pixels the images are read at"
    )
    parser.add_argument(
        "--num-workers", type=bounded_option(int, ge=0), default=2, help="DataLoader workers decoding"
    )
    add_column_options(parser)
    parser.add_argument("--json", metavar="FILE", help="write the full report here")


def check(args: argparse.Namespace) -> dict:
    """The report: counts, classes, what indexing left out and what does not decode."""
    dataset = build_dataset(args.source, args.resolution, 2, 0, **source_columns(args))
    if not isinstance(dataset, IndexedImageDataset):
        raise ConfigError(f"SOURCE={args.source!r}: builtin sources are generated, there is nothing to check")
    with tqdm(total=len(dataset), unit="img", desc="decoding", file=sys.stderr) as bar:
        unreadable = find_unreadable(dataset, args.num_workers, bar.update)
    counts = [0] * len(dataset.classes)
    for i in range(len(dataset)):
        counts[dataset.label(i)] += 1
    return {
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
        "num_samples": len(dataset),
        "num_seen": dataset.num_seen,
        "classes": dict(zip(dataset.classes, counts, strict=True)),
        "captioned": sum(1 for i in range(len(dataset)) if dataset.caption(i)),
        "left_out_when_indexed": [list(item) for item in dataset.skipped],
        "unreadable": [list(item) for item in unreadable],
    }


def run(args: argparse.Namespace) -> int:
    report = check(args)
    problems = [tuple(item) for item in report["left_out_when_indexed"] + report["unreadable"]]
    print(
        f"{report['source']}: {report['num_samples']} samples in {len(report['classes'])} classes, "
        f"{report['captioned']} captioned; {len(report['left_out_when_indexed'])} left out when indexed, "
        f"{len(report['unreadable'])} do not decode" + (f": {listed_skips(problems)}" if problems else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if report["unreadable"] else 0
