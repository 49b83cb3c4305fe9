"""Sources at scale: WebDataset shards, Hugging Face datasets, the cached folder index (data made here)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, tiny_config
from PIL import Image
from safetensors.torch import load_file
from webdataset.writer import TarWriter

from ldm_vae.data import (
    SHAPE_KINDS,
    ImageFolderDataset,
    ShapesDataset,
    WebDatasetShards,
    build_dataset,
    image_transform,
    read_skips,
)
from ldm_vae.data import index as folder_index_module
from ldm_vae.data import wds as wds_module
from ldm_vae.data.hf import HuggingFaceImages
from ldm_vae.errors import ConfigError

RES_PX = 16
REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------------
# helpers: tiny images, shards and datasets


def image_bytes(seed: int, fmt: str = "PNG", size: tuple[int, int] = (20, 18)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def expected_image(data: bytes) -> torch.Tensor:
    """What every source must give for these encoded bytes: decoded, resized, cropped, in [-1, 1]."""
    return image_transform(RES_PX)(Image.open(io.BytesIO(data)).convert("RGB"))


def write_shard(path: Path, samples: list[dict[str, bytes | str]]) -> None:
    """One tar shard; each sample a dict of extension -> content plus "__key__"."""
    with TarWriter(str(path), encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(
                {k: v.encode() if isinstance(v, str) and k != "__key__" else v for k, v in sample.items()}
            )


def write_shards(folder: Path, num_shards: int = 2, per_shard: int = 5) -> list[dict]:
    """Shards shard-00000.tar ... with png images, an integer class and a caption; returns the samples."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for s in range(num_shards):
        samples = [
            {
                "__key__": f"{s:02d}{i:03d}",
                "png": image_bytes(10 * s + i),
                "cls": str((s + i) % 3),
                "txt": f"p {s} {i}",
            }
            for i in range(per_shard)
        ]
        write_shard(folder / f"shard-{s:05d}.tar", samples)
        written += samples
    return written


@pytest.fixture
def count_builds(monkeypatch):
    """Counts index builds of folders and shards (to tell a cache hit from a rebuild)."""
    counts = {"folder": 0, "wds": 0}

    def counting(kind, build):
        def wrapper(*args):
            counts[kind] += 1
            return build(*args)

        return wrapper

    monkeypatch.setattr(folder_index_module, "_build", counting("folder", folder_index_module._build))
    monkeypatch.setattr(wds_module, "_build", counting("wds", wds_module._build))
    return counts


# ---------------------------------------------------------------------------------------------------------
# wds:


def test_shards_load_with_labels_captions_and_images(tmp_path):
    written = write_shards(tmp_path / "shards")
    dataset = build_dataset(f"wds:{tmp_path}/shards/shard-{{00000..00001}}.tar", RES_PX, 1, 0)
    assert isinstance(dataset, WebDatasetShards) and len(dataset) == 10
    assert dataset.classes == ["0", "1", "2"] and dataset.skipped == [] and dataset.num_seen == 10
    for i, sample in enumerate(written):
        image, label = dataset[i]
        assert torch.equal(image, expected_image(sample["png"]))
        assert label == int(sample["cls"]) and dataset.caption(i) == sample["txt"]
        assert dataset.sample_key(i) == f"shard-{i // 5:05d}.tar:{sample['__key__']}"
    assert dataset.shard_ranges() == [range(0, 5), range(5, 10)]


def test_a_folder_a_list_file_and_a_brace_pattern_name_the_same_shards(tmp_path):
    write_shards(tmp_path / "shards", num_shards=3, per_shard=2)
    (tmp_path / "shards" / "list.txt").write_text(
        "# shards\nshard-00000.tar\nshard-00001.tar\nshard-00002.tar\n"
    )
    by_folder = WebDatasetShards(str(tmp_path / "shards"), RES_PX)
    by_list = WebDatasetShards(str(tmp_path / "shards" / "list.txt"), RES_PX)
    by_pattern = WebDatasetShards(f"{tmp_path}/shards/shard-{{00000..00002}}.tar", RES_PX)
    keys = [by_folder.sample_key(i) for i in range(6)]
    assert keys == [by_list.sample_key(i) for i in range(6)] == [by_pattern.sample_key(i) for i in range(6)]
    assert by_folder.fingerprint == by_list.fingerprint == by_pattern.fingerprint


def test_class_names_from_json_and_from_named_cls(tmp_path):
    write_shard(
        tmp_path / "a.tar",
        [
            {
                "__key__": "x",
                "jpg": image_bytes(0, "JPEG"),
                "json": json.dumps({"label": 1, "class_name": "dog"}),
            },
            {
                "__key__": "y",
                "jpg": image_bytes(1, "JPEG"),
                "json": json.dumps({"label": 0, "class_name": "cat"}),
            },
        ],
    )
    assert WebDatasetShards(str(tmp_path / "a.tar"), RES_PX).classes == ["cat", "dog"]
    write_shard(
        tmp_path / "b.tar",
        [
            {"__key__": f"k{i}", "webp": image_bytes(i, "WEBP"), "cls": name}
            for i, name in enumerate(["zebra", "ant"])
        ],
    )
    named = WebDatasetShards(str(tmp_path / "b.tar"), RES_PX)
    assert named.classes == ["ant", "zebra"] and [named.label(i) for i in range(2)] == [1, 0]


def test_corrupt_members_are_skipped_counted_and_named(tmp_path):
    good = [{"__key__": f"g{i}", "png": image_bytes(i)} for i in range(3)]
    write_shard(
        tmp_path / "data.tar",
        [
            good[0],
            {"__key__": "bad", "png": b"not a png at all"},
            good[1],
            {"__key__": "noimage", "txt": "hi"},
            good[2],
        ],
    )
    dataset = WebDatasetShards(str(tmp_path / "data.tar"), RES_PX)
    # no image member: left out when indexing, named with its reason
    assert dataset.skipped == [("data.tar:noimage", "no jpg/jpeg/png/webp/bmp member")]
    assert len(dataset) == 4 and dataset.num_seen == 5
    # an image member that does not decode: replaced by the next sample when read, logged once by name
    log = tmp_path / "skips.jsonl"
    dataset.record_skips_to(log)
    assert torch.equal(dataset[1][0], expected_image(good[1]["png"]))
    assert torch.equal(dataset[1][0], dataset[1][0])
    assert read_skips(log) == [("data.tar:bad", "not a readable image")]
    assert dataset.problem(1) == "not a readable image" and dataset.problem(0) is None


def test_a_truncated_shard_keeps_its_whole_samples(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=4)
    data = (tmp_path / "shard-00000.tar").read_bytes()
    with tarfile.open(tmp_path / "shard-00000.tar") as tar:
        last_image = [m for m in tar.getmembers() if m.name.endswith(".png")][-1]
    cut = last_image.offset_data + 10  # inside the last image
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    dataset = WebDatasetShards(str(tmp_path / "cut.tar"), RES_PX)
    assert len(dataset) == 3 and dataset.skipped == [("cut.tar:00003.png", "truncated")]
    assert dataset.num_seen == 4


def test_a_file_that_is_not_a_tar_is_skipped_and_named(tmp_path):
    write_shards(tmp_path, num_shards=1, per_shard=2)
    (tmp_path / "shard-00001.tar").write_bytes(b"\x00garbage" * 100)
    dataset = WebDatasetShards(str(tmp_path), RES_PX)
    assert len(dataset) == 2
    assert [name for name, _ in dataset.skipped] == ["shard-00001.tar"]


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("", "empty pattern"),
        ("{folder}/shard-{{00000..00002}}.tar", r"shard .*shard-00002\.tar does not exist"),
        ("{folder}/empty", "holds no .tar files"),
        ("{folder}/list.txt", r"shard .*missing\.tar does not exist"),
        ("https://example.com/shard-{{0..9}}.tar", "only local shards"),
    ],
)
def test_shard_errors_are_one_line_and_name_the_thing(tmp_path, pattern, match):
    write_shards(tmp_path / "shards")
    (tmp_path / "shards" / "empty").mkdir()
    (tmp_path / "shards" / "list.txt").write_text("shard-00000.tar\nmissing.tar\n")
    with pytest.raises(ConfigError, match=match) as info:
        build_dataset("wds:" + pattern.format(folder=tmp_path / "shards"), RES_PX, 1, 0)
    assert "\n" not in str(info.value)


def test_unknown_shard_column_is_an_error_listing_what_exists(tmp_path):
    write_shards(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.caption_column='caption'.*extensions seen: cls, png, txt"):
        WebDatasetShards(str(tmp_path), RES_PX, caption_column="caption")
    other = WebDatasetShards(
        str(tmp_path), RES_PX, image_column="png", label_column="cls", caption_column="txt"
    )
    assert len(other) == 10


def test_shard_index_is_reused_and_rebuilt_when_a_shard_changes(tmp_path, count_builds):
    write_shards(tmp_path)
    first = WebDatasetShards(str(tmp_path), RES_PX)
    again = WebDatasetShards(str(tmp_path), RES_PX)
    assert count_builds["wds"] == 1 and again.fingerprint == first.fingerprint
    write_shard(tmp_path / "shard-00001.tar", [{"__key__": "new", "png": image_bytes(99), "cls": "0"}])
    changed = WebDatasetShards(str(tmp_path), RES_PX)
    assert count_builds["wds"] == 2 and len(changed) == 6 and changed.fingerprint != first.fingerprint


# ---------------------------------------------------------------------------------------------------------
# hf:


def save_hf_dataset(folder: Path, n: int = 6, splits: bool = False, num_shards: int = 1) -> list[bytes]:
    """A save_to_disk dataset: Image, ClassLabel and a caption column, in `num_shards` Arrow files;
    returns the encoded images."""
    images = [image_bytes(i) for i in range(n)]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "kind": datasets.ClassLabel(names=["cat", "dog"]),
            "text": datasets.Value("string"),
        }
    )
    rows = {"img": [{"bytes": b, "path": None} for b in images], "kind": [i % 2 for i in range(n)]}
    rows["text"] = [f"caption {i}" for i in range(n)]
    ds = datasets.Dataset.from_dict(rows, features=features)
    (datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}) if splits else ds).save_to_disk(
        str(folder), num_shards=None if splits else num_shards
    )
    return images


def test_hf_dataset_from_disk_detects_image_label_and_caption_columns(tmp_path):
    images = save_hf_dataset(tmp_path / "ds")
    dataset = build_dataset(f"hf:{tmp_path}/ds", RES_PX, 1, 0)
    assert isinstance(dataset, HuggingFaceImages) and len(dataset) == 6
    assert dataset.columns == {"image": "img", "label": "kind", "caption": "text"}
    assert dataset.classes == ["cat", "dog"]
    for i, data in enumerate(images):
        image, label = dataset[i]
        assert torch.equal(image, expected_image(data)) and label == i % 2
        assert dataset.caption(i) == f"caption {i}" and dataset.sample_key(i) == str(i)


def test_hf_splits_and_parquet_files(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    save_hf_dataset(tmp_path / "dict", splits=True)
    assert len(HuggingFaceImages(f"{tmp_path}/dict", RES_PX)) == 6  # "train" by default
    assert len(HuggingFaceImages(f"{tmp_path}/dict:test", RES_PX)) == 2
    with pytest.raises(ConfigError, match="no split 'valid'; splits: train, test"):
        HuggingFaceImages(f"{tmp_path}/dict:valid", RES_PX)

    datasets.load_from_disk(str(tmp_path / "dict"))["train"].to_parquet(str(tmp_path / "data.parquet"))
    from_parquet = HuggingFaceImages(f"{tmp_path}/data.parquet", RES_PX)
    assert (
        len(from_parquet) == 6
        and from_parquet.classes == ["cat", "dog"]
        and from_parquet.caption(5) == "caption 5"
    )


def test_hf_string_and_integer_label_columns(tmp_path):
    rows = {
        "image": [image_bytes(i) for i in range(4)],
        "species": ["owl", "ant", "owl", "bee"],
        "n": [2, 0, 2, 1],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    by_name = HuggingFaceImages(str(tmp_path / "ds"), RES_PX, image_column="image", label_column="species")
    assert by_name.classes == ["ant", "bee", "owl"] and [by_name.label(i) for i in range(4)] == [2, 0, 2, 1]
    by_number = HuggingFaceImages(str(tmp_path / "ds"), RES_PX, image_column="image", label_column="n")
    assert by_number.classes == ["0", "1", "2"] and [by_number.label(i) for i in range(4)] == [2, 0, 2, 1]
    assert by_number.caption(0) == ""


def test_hf_undecodable_row_is_replaced_and_named(tmp_path):
    images = [image_bytes(0), b"garbage", image_bytes(2)]
    datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()})
    ).save_to_disk(str(tmp_path / "ds"))
    dataset = HuggingFaceImages(str(tmp_path / "ds"), RES_PX)
    dataset.record_skips_to(tmp_path / "skips.jsonl")
    assert torch.equal(dataset[1][0], expected_image(images[2])) and dataset.classes == ["."]
    assert read_skips(tmp_path / "skips.jsonl") == [("row 1", "not a readable image")]


@pytest.mark.parametrize(
    ("spec", "columns", "match"),
    [
        (
            "{tmp}/ds",
            {"label_column": "breed"},
            r"data\.label_column='breed': no such column; columns: img, kind, text",
        ),
        ("{tmp}/ds", {"image_column": "kind"}, r"data\.image_column='kind': is a ClassLabel"),
        ("{tmp}/ds:train", {}, "has no splits; drop ':train'"),
        ("{tmp}/missing", {}, "missing does not exist"),
        ("{tmp}/ds", {"caption_column": "kind"}, r"data\.caption_column='kind': is a ClassLabel"),
    ],
)
def test_hf_errors_are_one_line_and_name_the_thing(tmp_path, spec, columns, match):
    save_hf_dataset(tmp_path / "ds")
    with pytest.raises(ConfigError, match=match) as info:
        build_dataset("hf:" + spec.format(tmp=tmp_path), RES_PX, 1, 0, **columns)
    assert "\n" not in str(info.value)


def test_a_dataset_without_images_asks_for_the_column(tmp_path):
    datasets.Dataset.from_dict({"x": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match="no Image column; set data.image_column to one of x"):
        HuggingFaceImages(str(tmp_path / "ds"), RES_PX)


def test_hf_shards_are_its_arrow_files(tmp_path):
    save_hf_dataset(tmp_path / "ds", n=10, num_shards=3)
    dataset = HuggingFaceImages(str(tmp_path / "ds"), RES_PX)
    ranges = dataset.shard_ranges()
    assert len(ranges) == 3 and ranges[0].start == 0 and ranges[-1].stop == 10
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:], strict=False))
    save_hf_dataset(tmp_path / "one", n=4)
    assert HuggingFaceImages(str(tmp_path / "one"), RES_PX).shard_ranges() == [range(0, 4)]


# ---------------------------------------------------------------------------------------------------------
# folder index


def write_folder(root: Path, n_per_class: int = 3) -> None:
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            (root / name / f"{i}.png").write_bytes(image_bytes(10 * label + i))


def test_folder_index_is_reused_and_rebuilt_when_files_change(tmp_path, count_builds):
    root = tmp_path / "images"
    write_folder(root)
    first = ImageFolderDataset(root, RES_PX)
    assert count_builds["folder"] == 1 and len(first) == 6
    assert ImageFolderDataset(root, RES_PX).fingerprint == first.fingerprint and count_builds["folder"] == 1

    (root / "dog" / "new.png").write_bytes(image_bytes(50))  # added in a sub-folder
    added = ImageFolderDataset(root, RES_PX)
    assert count_builds["folder"] == 2 and len(added) == 7 and added.fingerprint != first.fingerprint
    (root / "cat" / "0.png").unlink()  # removed
    assert len(ImageFolderDataset(root, RES_PX)) == 6 and count_builds["folder"] == 3
    (root / "bird").mkdir()  # a new class
    (root / "bird" / "0.png").write_bytes(image_bytes(60))
    assert ImageFolderDataset(root, RES_PX).classes == ["bird", "cat", "dog"] and count_builds["folder"] == 4


def test_folder_index_survives_an_mtime_left_unchanged(tmp_path, count_builds):
    """A file added within the filesystem's clock tick leaves its directory's mtime as it was."""
    root = tmp_path / "images"
    write_folder(root)
    ImageFolderDataset(root, RES_PX)
    before = os.stat(root / "cat")
    (root / "cat" / "late.png").write_bytes(image_bytes(70))
    os.utime(root / "cat", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert len(ImageFolderDataset(root, RES_PX)) == 7 and count_builds["folder"] == 2


def test_folder_captions_from_sidecars_and_metadata(tmp_path):
    root = tmp_path / "images"
    write_folder(root, n_per_class=2)
    (root / "cat" / "0.txt").write_text("a grey cat\n")
    rows = [
        {"file_name": "dog/1.png", "text": "a dog running"},
        {"file_name": "cat/0.png", "text": "overruled"},
    ]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    dataset = ImageFolderDataset(root, RES_PX)
    captions = {dataset.sample_key(i): dataset.caption(i) for i in range(len(dataset))}
    assert captions == {
        "cat/0.png": "a grey cat",
        "cat/1.png": "",
        "dog/0.png": "",
        "dog/1.png": "a dog running",
    }


def _build_in_child(root: str, log: str) -> None:
    """Child process: count builds in `log`, then open the index."""
    original = folder_index_module._build

    def logged(*args):
        with open(log, "a") as file:
            file.write("build\n")
        return original(*args)

    folder_index_module._build = logged
    ImageFolderDataset(root, RES_PX)


def test_concurrent_processes_build_the_folder_index_once(tmp_path):
    root = tmp_path / "images"
    write_folder(root, n_per_class=40)
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_build_in_child, args=(str(root), str(log))) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert log.read_text() == "build\n"


def test_folder_dataset_pickles_without_its_arrays(tmp_path):
    import pickle

    write_folder(tmp_path / "images")
    dataset = ImageFolderDataset(tmp_path / "images", RES_PX)
    dataset[0]  # maps the arrays
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 4000  # the memory maps are not copied into the pickle
    assert torch.equal(copy[3][0], dataset[3][0]) and copy.caption(3) == dataset.caption(3)


def test_columns_are_refused_for_folders(tmp_path):
    write_folder(tmp_path / "images")
    with pytest.raises(ConfigError, match=r"data\.label_column='x': only hf: and wds: sources have columns"):
        build_dataset(str(tmp_path / "images"), RES_PX, 1, 0, label_column="x")


# ---------------------------------------------------------------------------------------------------------
# ldm-vae pack and ldm-vae check-data


def write_captioned_folder(root: Path) -> None:
    write_folder(root, n_per_class=5)
    (root / "cat" / "0.txt").write_text("a cat")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "dog/4.png", "caption": "a dog"}))
    (root / "dog" / "broken.png").write_text("not an image")


def test_pack_writes_shards_that_read_back_as_the_folder(tmp_path):
    from ldm_vae.train.cli import main

    root = tmp_path / "images"
    write_captioned_folder(root)
    out = tmp_path / "out"
    assert main(["pack", str(root), str(out), "--shard-size", "4"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-{i:05d}.tar" for i in range(3)]
    folder, shards = ImageFolderDataset(root, RES_PX), WebDatasetShards(str(tmp_path / "out"), RES_PX)
    assert len(shards) == len(folder) == 10 and shards.classes == folder.classes == ["cat", "dog"]
    by_path = {folder.sample_key(i): i for i in range(len(folder))}
    order = []
    for i in range(len(shards)):
        with tarfile.open(shards.shards[shards._shard[i]]) as tar:  # the packed json names the source file
            key = shards.sample_key(i).split(":")[1]
            path = json.loads(tar.extractfile(f"{key}.json").read())["path"]
        j = by_path[path]
        order.append(j)
        assert torch.equal(shards[i][0], folder[j][0]) and shards.label(i) == folder.label(j)
        assert shards.caption(i) == folder.caption(j)
    assert sorted(order) == list(range(10)) and order != list(range(10))  # all of them, shuffled
    plan = json.loads((tmp_path / "out" / "pack.json").read_text())
    assert plan["skipped"] == [["dog/broken.png", "not a readable image"]]


def test_an_interrupted_pack_resumes_to_the_same_bytes(tmp_path):
    from ldm_vae.train.cli import main

    root = tmp_path / "images"
    write_captioned_folder(root)
    out = tmp_path / "out"
    assert main(["pack", str(root), str(out), "--shard-size", "3"]) == 0
    whole = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    (out / "shard-00002.tar").unlink()  # as if killed before the third shard was renamed into place
    (out / ".tmp-shard-00002.tar").write_bytes(b"partial")
    assert main(["pack", str(root), str(out), "--shard-size", "3"]) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == whole
    assert main(["pack", str(root), str(out), "--shard-size", "5"]) == 2  # other settings, same folder


def test_check_data_names_every_unreadable_sample(tmp_path, capsys):
    from ldm_vae.train.cli import main

    root = tmp_path / "images"
    write_captioned_folder(root)
    half = (root / "cat" / "1.png").read_bytes()
    (root / "cat" / "1.png").write_bytes(half[: len(half) // 2])  # its header still parses
    report_path = tmp_path / "report.json"
    assert main(["check-data", str(root), "--num-workers", "0", "--json", str(report_path)]) == 1
    line = capsys.readouterr().out
    assert "10 samples in 2 classes, 2 captioned; 1 left out when indexed, 1 do not decode" in line
    report = json.loads(report_path.read_text())
    assert report["unreadable"] == [["cat/1.png", "truncated"]]
    assert report["classes"] == {"cat": 5, "dog": 5}

    write_shards(tmp_path / "shards")
    assert main(["check-data", f"wds:{tmp_path}/shards", "--num-workers", "1"]) == 0
    assert main(["check-data", "builtin:shapes"]) == 2


# ---------------------------------------------------------------------------------------------------------
# jobs on wds: and hf: sources: encode by input shard, exact resume after SIGKILL, two processes


def encode_args(model: Path, data: str, out: Path) -> list[str]:
    return [
        *("encode", "--model", str(model), "--data", data, "--shard-size", "4", "--batch-size", "2"),
        *("--num-workers", "0", "--resolution", str(RES_PX), "--out", str(out)),
    ]


def launch(module: str, arguments: list[str], processes: int = 1) -> subprocess.Popen:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float sums as in-process
    command = [*launcher, "-m", module, *arguments]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """SIGKILL `process` as soon as `ready()` holds."""
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_encode_keeps_input_shards_whole_and_records_the_source(kl_model, tmp_path):
    from ldm_vae.train.cli import main
    from ldm_vae.train.encode import plan_shards, shard_range

    written = write_shards(tmp_path / "shards", num_shards=3, per_shard=5)
    data = f"wds:{tmp_path}/shards"
    assert main(encode_args(kl_model, data, tmp_path / "store")) == 0
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert [shard["count"] for shard in manifest["shards"]] == [4, 1, 4, 1, 4, 1]  # never across input shards
    assert manifest["data"]["source"] == data
    assert manifest["data"]["fingerprint"] == WebDatasetShards(f"{tmp_path}/shards", RES_PX).fingerprint
    stored = [load_file(tmp_path / "store" / shard["file"]) for shard in manifest["shards"]]
    assert torch.equal(torch.cat([s["sample_index"] for s in stored]), torch.arange(15))
    assert torch.cat([s["labels"] for s in stored]).tolist() == [int(sample["cls"]) for sample in written]

    groups = plan_shards(WebDatasetShards(f"{tmp_path}/shards", RES_PX), 4)
    assert groups == [[range(0, 4), range(4, 5)], [range(5, 9), range(9, 10)], [range(10, 14), range(14, 15)]]
    assert [shard_range(len(groups), rank, 2) for rank in (0, 1)] == [range(0, 2), range(2, 3)]


def encode_source(kind: str, folder: Path) -> tuple[str, str]:
    """36 good samples in 4 shards and a fifth shard of one undecodable sample, as wds: or hf:
    (Arrow files); returns the source and the name the bad sample is reported by."""
    if kind == "wds":
        write_shards(folder, num_shards=4, per_shard=9)
        write_shard(folder / "shard-00004.tar", [{"__key__": "bad", "png": b"garbage", "cls": "1"}])
        return f"wds:{folder}", "shard-00004.tar:bad"
    images = [image_bytes(i) for i in range(36)] + [b"garbage"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    rows = {"image": [{"bytes": b, "path": None} for b in images], "label": [i % 3 for i in range(37)]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder), num_shards=5)
    return f"hf:{folder}", "row 36"


@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_eval_ae_reads_shards_and_datasets_and_names_what_did_not_decode(kl_model, tmp_path, kind):
    from ldm_vae.train.cli import main

    data, bad_name = encode_source(kind, tmp_path / "data")
    missing = [f"--{name}={tmp_path / 'missing.pth'}" for name in ("inception", "lpips-vgg16", "lpips-heads")]
    out = tmp_path / "eval"
    arguments = ["eval-ae", f"--model={kl_model}", f"--data={data}", "--num-workers=0", f"--out={out}"]
    assert main([*arguments, "--resolution=16", *missing]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 37 and report["data"] == data
    assert report["skipped_files"] == [[bad_name, "not a readable image"]]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_encode_resumes_after_sigkill_and_two_processes_match_one(kl_model, tmp_path, kind):
    data, bad_name = encode_source(kind, tmp_path / "data")

    def digests(out: Path) -> list[str]:
        return [shard["sha256"] for shard in json.loads((out / "manifest.json").read_text())["shards"]]

    whole = tmp_path / "whole"
    assert launch("ldm_vae.train.encode", encode_args(kl_model, data, whole)[1:]).wait(timeout=300) == 0
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["skipped"] == [[bad_name, "not a readable image"]]
    assert manifest["data"]["fingerprint"] == build_dataset(data, RES_PX, 1, 0).fingerprint

    killed = tmp_path / "killed"
    process = launch("ldm_vae.train.encode", encode_args(kl_model, data, killed)[1:])
    kill_when(process, lambda: (killed / "shard-00002.json").exists())
    assert not (killed / "manifest.json").exists(), "the kill should land before the end"
    assert launch("ldm_vae.train.encode", encode_args(kl_model, data, killed)[1:]).wait(timeout=300) == 0
    assert digests(killed) == digests(whole)

    two = tmp_path / "two"
    completed = launch("ldm_vae.train.encode", encode_args(kl_model, data, two)[1:], processes=2)
    assert completed.wait(timeout=300) == 0, completed.stderr.read().decode()[-2000:]
    assert digests(two) == digests(whole)


TRAIN_STEPS = ["train.max_steps=12", "train.checkpoint_every_steps=2", "train.image_every_steps=1000"]


def tiny_source(kind: str, folder: Path) -> tuple[str, str]:
    """40 shapes as PNGs of 20 px in a wds: (4 shards) or an hf: source, the same pixels either way, the
    last one not decodable; returns the source and the name the bad sample is reported by."""
    shapes = ShapesDataset(40, 20, seed=0)
    encoded = []
    for i in range(40):
        pixels = ((shapes[i][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append((buffer.getvalue(), shapes[i][1]))
    encoded[-1] = (b"garbage", encoded[-1][1])
    if kind == "wds":
        folder.mkdir(parents=True)
        for s in range(4):
            part = encoded[s * 10 : (s + 1) * 10]
            write_shard(
                folder / f"part-{s}.tar",
                [
                    {"__key__": f"{i:03d}", "png": png, "cls": str(label)}
                    for i, (png, label) in enumerate(part)
                ],
            )
        return f"wds:{folder}/part-{{0..3}}.tar", "part-3.tar:009"
    rows = {"image": [png for png, _ in encoded], "label": [label for _, label in encoded]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=SHAPE_KINDS)})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return f"hf:{folder}", "row 39"


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "order"), [("wds", "global"), ("hf", "global"), ("wds", "shards")])
def test_train_ae_killed_and_resumed_ends_bit_identical(tmp_path, kind, order):
    """In shard order with 2 workers: 2 readers, each reading its own shards, resumed exactly."""
    from ldm_vae.train.autoencoder import train
    from ldm_vae.training.checkpoints import list_checkpoints

    source, bad_name = tiny_source(kind, tmp_path / "data")
    workers = 2 if order == "shards" else 1
    settings = [f"data.source={source}", f"data.num_workers={workers}", f"data.order={order}", *TRAIN_STEPS]
    uninterrupted = train(tiny_config(tmp_path / "a", *settings))

    interrupted = tmp_path / "b"
    arguments = ["kl-tiny", *TINY_OVERRIDES, *settings, f"run_dir={interrupted}"]
    process = launch("ldm_vae.train.autoencoder", arguments)
    kill_when(process, lambda: len(list_checkpoints(interrupted)) >= 2 if interrupted.exists() else False)
    stopped_at = json.loads((list_checkpoints(interrupted)[-1] / "progress.json").read_text())["step"]
    assert 2 <= stopped_at < 12

    train(tiny_config(interrupted, *settings, "train.resume=latest"))
    progress = json.loads((list_checkpoints(interrupted)[-1] / "progress.json").read_text())
    assert progress["shard_readers"] == (2 if order == "shards" else 0)  # the layout the run streamed in
    for name in ("ae", "discriminator"):
        a = load_file(list_checkpoints(uninterrupted)[-1] / f"{name}.safetensors")
        b = load_file(list_checkpoints(interrupted)[-1] / f"{name}.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a), f"{name}: resumed weights differ"
    for run in (uninterrupted, interrupted):  # replaced the same way in every run, named in metrics.json
        skipped = json.loads((run / "metrics.json").read_text())["skipped_files"]
        assert skipped == [[bad_name, "not a readable image"]]


def test_held_out_split_of_an_indexed_source_is_cached_with_its_index(tmp_path, monkeypatch):
    from ldm_vae.data import split

    write_folder(tmp_path / "images", n_per_class=6)
    dataset = ImageFolderDataset(tmp_path / "images", RES_PX)
    computed = split.train_held_out_split(dataset, 3, seed=5)
    monkeypatch.setattr(split, "_rank", lambda *_: pytest.fail("the cached split should be read, not hashed"))
    assert split.train_held_out_split(ImageFolderDataset(tmp_path / "images", RES_PX), 3, seed=5) == computed
    monkeypatch.undo()
    (tmp_path / "images" / "cat" / "new.png").write_bytes(image_bytes(99))  # a new index: hashed again
    grown = ImageFolderDataset(tmp_path / "images", RES_PX)
    assert len(split.train_held_out_split(grown, 3, seed=5)[0]) == 10


# ---------------------------------------------------------------------------------------------------------
# the stream over a source: two processes, shard order


def test_shard_order_needs_a_sharded_source(tmp_path):
    from ldm_vae.data import stream_shards

    write_folder(tmp_path / "images")
    folder = ImageFolderDataset(tmp_path / "images", RES_PX)
    assert stream_shards(folder, "global", str(tmp_path / "images")) is None
    with pytest.raises(ConfigError, match=r"data\.order=shards: data\.source='.*images' is not stored in"):
        stream_shards(folder, "shards", str(tmp_path / "images"))
    write_shards(tmp_path / "shards")
    shards = WebDatasetShards(str(tmp_path / "shards"), RES_PX)
    assert stream_shards(shards, "shards", "wds:...") == [range(0, 5), range(5, 10)]


def test_a_resume_that_would_change_the_shard_stream_is_refused():
    from ldm_vae.training.checkpoints import Progress, check_stream_layout

    progress = Progress()
    check_stream_layout(progress, shard_readers=4, batch_size=2)  # a new run records its layout
    progress.samples_seen = 16
    check_stream_layout(progress, shard_readers=4, batch_size=2)  # the same layout resumes
    for readers, batch in ((2, 2), (4, 4), (0, 2)):
        with pytest.raises(ConfigError, match="with 4 readers at batch 2, now .*resume with the same"):
            check_stream_layout(progress, shard_readers=readers, batch_size=batch)
    old = Progress(samples_seen=16)  # a checkpoint from before the field, or a global-order run
    check_stream_layout(old, shard_readers=0, batch_size=8)
    with pytest.raises(ConfigError, match="in data.order=global, now data.order=shards with 2 readers"):
        check_stream_layout(old, shard_readers=2, batch_size=8)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "order"), [("wds", "global"), ("wds", "shards"), ("hf", "shards")])
def test_two_torchrun_processes_read_the_stream_disjointly(tmp_path, kind, order):
    """40 samples in 4 shards of 10, 2 processes x 2 DataLoader workers, batch 2, 10 micro-batches each:
    one epoch, each sample once. In shard order each of the 4 readers reads one whole shard."""
    if kind == "wds":
        write_shards(tmp_path / "data", num_shards=4, per_shard=10)
    else:
        save_hf_dataset(tmp_path / "data", n=40, num_shards=4)
    source = f"{kind}:{tmp_path}/data"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    worker = REPO / "tests" / "data_stream_worker.py"
    completed = subprocess.run(
        [*command, str(worker), source, order, "2", "2", "10", "0", str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [rank["world"] for rank in ranks] == [2, 2]
    drawn = [tuple(item) for rank in ranks for item in rank["drawn"]]
    assert sorted(position for _, position, _ in drawn) == list(range(40))  # the ranks split the stream
    assert sorted(index for index, _, _ in drawn) == list(range(40))  # one epoch: every sample once
    shards = [range(*bounds) for bounds in ranks[0]["shards"]]
    read_by = {}  # (rank, worker) -> shards it read
    for rank, report in enumerate(ranks):
        for index, _, worker in report["drawn"]:
            read_by.setdefault((rank, worker), set()).add(next(s for s, r in enumerate(shards) if index in r))
    assert len(read_by) == 4
    if order == "shards":
        assert sorted(len(mine) for mine in read_by.values()) == [1, 1, 1, 1]
        assert set().union(*read_by.values()) == {0, 1, 2, 3}
    else:  # the global order: any sample at any position, every reader touches most shards
        assert max(len(mine) for mine in read_by.values()) > 1
