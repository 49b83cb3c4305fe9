"""Tests for ldm_vae.data: shapes, image folders (odd modes, broken files), flips, split, build_dataset."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ldm_vae.data import (
    ImageFolderDataset,
    RandomFlipView,
    ShapesDataset,
    build_dataset,
    spread_picks,
    to_rgb,
    train_held_out_split,
)
from ldm_vae.data.indexed import read_skips
from ldm_vae.errors import ConfigError

RES_PX = 16

# ---------------------------------------------------------------------------------------------------------
# helpers: tiny image files of every kind a real folder may hold


def _rgb_array(height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_good_image(path: Path, kind: str) -> None:
    """Writes one valid image of `kind` to `path` (suffix chosen by the caller)."""
    rgb = Image.fromarray(_rgb_array())
    if kind == "grey":
        rgb.convert("L").save(path)
    elif kind == "bilevel":
        rgb.convert("1").save(path)
    elif kind == "palette":
        rgb.convert("P").save(path)
    elif kind == "palette_transparent":
        rgb.convert("P").save(path, transparency=0)
    elif kind == "rgba":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path)
    elif kind == "la":
        rgb.convert("LA").save(path)
    elif kind == "cmyk":
        rgb.convert("CMYK").save(path, format="JPEG")
    elif kind == "grey16":
        Image.fromarray(np.full((24, 40), 1000, dtype=np.uint16)).save(path)
    else:  # rgb in the format given by the suffix (jpeg, webp, bmp, png)
        rgb.save(path)


GOOD_KINDS = [
    ("grey", "png"),
    ("bilevel", "png"),
    ("palette", "png"),
    ("palette_transparent", "png"),
    ("rgba", "png"),
    ("la", "png"),
    ("cmyk", "jpg"),
    ("grey16", "png"),
    ("rgb", "webp"),
    ("rgb", "bmp"),
    ("rgb", "jpeg"),
    ("rgb", "JPG"),  # suffixes match case-insensitively
]


def _write_broken_files(folder: Path) -> dict[str, str]:
    """Writes the usual kinds of broken file; returns {relative path: expected reason}."""
    for suffix in ("png", "jpg"):
        Image.fromarray(_rgb_array(64, 64)).save(folder / f"whole.{suffix}")
        data = (folder / f"whole.{suffix}").read_bytes()
        (folder / f"whole.{suffix}").unlink()
        (folder / f"truncated.{suffix}").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("this is not a png\n")
    (folder / "empty.jpg").write_bytes(b"")
    return {
        "truncated.png": "truncated",
        "truncated.jpg": "truncated",
        "text.png": "not a readable image",
        "empty.jpg": "empty file",
    }


def _assert_image(image: torch.Tensor, res_px: int = RES_PX) -> None:
    assert image.shape == (3, res_px, res_px)
    assert image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0


# ---------------------------------------------------------------------------------------------------------
# image folders


@pytest.mark.parametrize(("kind", "suffix"), GOOD_KINDS)
def test_every_image_kind_loads_as_rgb(tmp_path, kind, suffix):
    _write_good_image(tmp_path / f"img.{suffix}", kind)
    dataset = ImageFolderDataset(tmp_path, RES_PX)
    assert dataset.skipped == [] and len(dataset) == 1
    image, label = dataset[0]
    _assert_image(image)
    assert label == 0


def test_16bit_mid_grey_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    image, _ = ImageFolderDataset(tmp_path, RES_PX)[0]
    assert image.abs().max() < 0.01  # 32768 / 65535 ~ 0.5 -> 0 in [-1, 1]; PIL's convert would give 1


@pytest.mark.parametrize(
    ("pixels", "mode"),
    [
        (np.full((4, 4), 32768, dtype=np.uint16), "I;16"),
        (np.full((4, 4), 32768, dtype=">u2"), "I;16B"),
        (np.full((4, 4), 32768, dtype=np.int32), "I"),  # older Pillows open 16-bit PNGs as "I"
        (np.full((4, 4), 0.5, dtype=np.float32), "F"),
    ],
)
def test_high_bit_depth_modes_map_mid_grey_to_mid_grey(pixels, mode):
    image = Image.frombytes(mode, (4, 4), pixels.tobytes())
    assert image.mode == mode
    assert to_rgb(image).mode == "RGB" and to_rgb(image).getpixel((0, 0)) == (128, 128, 128)


def test_transparent_pixels_are_composited_over_white(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    image, _ = ImageFolderDataset(tmp_path, RES_PX)[0]
    assert torch.equal(image, torch.ones_like(image))


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    pixels = np.zeros((32, 96, 3), dtype=np.uint8)  # (H, W, 3): red margins, green middle half
    pixels[:, :24] = pixels[:, 72:] = (255, 0, 0)  # the crop keeps columns 32..64, 8 px clear of the filter
    pixels[:, 24:72] = (0, 255, 0)
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image, _ = ImageFolderDataset(tmp_path, RES_PX)[0]
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert torch.allclose(image, green.expand_as(image), atol=1e-6)


def test_broken_files_are_left_out_when_indexed_or_replaced_when_read(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    expected = _write_broken_files(folder)
    _write_good_image(folder / "good.png", "rgb")
    (folder / "notes.txt").write_text("not an image suffix: never counted")
    dataset = ImageFolderDataset(folder, RES_PX)
    # Indexing reads headers only: files whose header does not parse are left out and reported at start ...
    at_index = {name: why for name, why in expected.items() if why != "truncated"}
    assert dict(dataset.skipped) == at_index
    report = dataset.skip_report()
    assert report.startswith(f"skipped 2 of 5 samples of {folder}") and "\n" not in report
    for name, reason in at_index.items():
        assert f"{name} ({reason})" in report
    # ... truncated pixels are found when read: replaced by the next readable sample, and logged.
    assert [dataset.sample_key(i) for i in range(len(dataset))] == [
        "good.png",
        "truncated.jpg",
        "truncated.png",
    ]
    log = tmp_path / "skipped.jsonl"
    dataset.record_skips_to(log)
    good = dataset[0][0]
    assert torch.equal(dataset[1][0], good) and torch.equal(dataset[2][0], good)  # wraps around to good.png
    assert read_skips(log) == [("truncated.jpg", "truncated"), ("truncated.png", "truncated")]


def test_skip_report_lists_at_most_ten_names(tmp_path):
    for i in range(12):
        (tmp_path / f"bad{i:02d}.png").write_text("junk")
    _write_good_image(tmp_path / "good.png", "rgb")
    report = ImageFolderDataset(tmp_path, RES_PX).skip_report()
    assert "bad09.png" in report and "bad10.png" not in report and report.endswith(", ...")


def test_labels_come_from_first_level_folders(tmp_path):
    for folder in ("dog", "cat", "cat/indoor", ".cache"):
        (tmp_path / folder).mkdir()
    _write_good_image(tmp_path / "dog" / "d.png", "rgb")
    _write_good_image(tmp_path / "cat" / "c.png", "rgb")
    _write_good_image(tmp_path / "cat" / "indoor" / "c2.png", "rgb")
    _write_good_image(tmp_path / "root.png", "rgb")
    _write_good_image(tmp_path / ".cache" / "hidden.png", "rgb")
    dataset = ImageFolderDataset(tmp_path, RES_PX)
    assert dataset.classes == [".", "cat", "dog"]
    keys = [dataset.sample_key(i) for i in range(len(dataset))]
    assert keys == ["cat/c.png", "cat/indoor/c2.png", "dog/d.png", "root.png"]
    assert [dataset[i][1] for i in range(len(dataset))] == [1, 1, 2, 0]


def test_flat_folder_is_one_class(tmp_path):
    for i in range(3):
        _write_good_image(tmp_path / f"{i}.png", "rgb")
    dataset = ImageFolderDataset(tmp_path, RES_PX)
    assert dataset.classes == ["."]
    assert {dataset[i][1] for i in range(3)} == {0}


def test_bad_folders_raise_config_error_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match="does not exist") as info:
        ImageFolderDataset(missing, RES_PX)
    assert str(missing) in str(info.value)

    a_file = tmp_path / "file.png"
    _write_good_image(a_file, "rgb")
    with pytest.raises(ConfigError, match="is a file") as info:
        ImageFolderDataset(a_file, RES_PX)
    assert str(a_file) in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="0 files .* seen, 0 skipped") as info:
        ImageFolderDataset(empty, RES_PX)
    assert str(empty) in str(info.value)

    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    _write_broken_files(only_broken)
    for truncated in only_broken.glob("truncated.*"):  # their headers parse: they would be indexed
        truncated.unlink()
    with pytest.raises(ConfigError, match="2 files .* seen, 2 skipped") as info:
        ImageFolderDataset(only_broken, RES_PX)
    assert str(only_broken) in str(info.value) and "\n" not in str(info.value)


def test_file_broken_after_scan_gives_next_sample_and_warns(tmp_path, caplog):
    for i in range(3):
        Image.fromarray(_rgb_array(seed=i)).save(tmp_path / f"{i}.png")
    dataset = ImageFolderDataset(tmp_path, RES_PX)
    (tmp_path / "1.png").write_text("overwritten")
    with caplog.at_level(logging.WARNING, logger="ldm_vae.data.indexed"):
        image, _ = dataset[1]
    assert torch.equal(image, dataset[2][0])
    assert "1.png" in caplog.text
    (tmp_path / "2.png").unlink()
    assert torch.equal(dataset[1][0], dataset[0][0])  # wraps around to the start


# ---------------------------------------------------------------------------------------------------------
# builtin shapes


def test_shapes_are_deterministic_per_seed_and_index():
    a, b, other = ShapesDataset(8, 32, seed=1), ShapesDataset(8, 32, seed=1), ShapesDataset(8, 32, seed=2)
    for i in range(8):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert not all(torch.equal(a[i][0], other[i][0]) for i in range(8))
    assert not torch.equal(a[0][0], a[1][0])


@pytest.mark.parametrize("res_px", [8, 16, 33, 64])
def test_shapes_range_labels_and_factors(res_px):
    dataset = ShapesDataset(40, res_px, seed=0)
    labels = set()
    for i in range(len(dataset)):
        image, label = dataset[i]
        _assert_image(image, res_px)
        assert 0 <= label < len(dataset.classes)
        labels.add(label)
        factors = dataset.factors(i)
        assert factors["label"] == label
        assert 0.0 <= factors["centre_x"] <= 1.0 and 0.0 <= factors["centre_y"] <= 1.0
        assert 0.0 < factors["size"] < 1.0
        assert len(factors["shape_rgb"]) == len(factors["background_rgb"]) == 3
    assert len(dataset.classes) >= 4 and len(labels) >= 4


def test_shapes_show_the_same_scene_at_every_resolution():
    small, large = ShapesDataset(4, 16, seed=3), ShapesDataset(4, 64, seed=3)
    assert [small.factors(i) for i in range(4)] == [large.factors(i) for i in range(4)]
    downsampled = torch.nn.functional.avg_pool2d(large[0][0][None], 4)[0]  # (3, 16, 16)
    assert (downsampled - small[0][0]).abs().mean() < 0.05


def test_shapes_contain_shape_and_background_colours():
    dataset = ShapesDataset(4, 64, seed=0)
    for i in range(4):
        pixels = dataset.render(i).reshape(-1, 3)  # (H*W, 3) in [0, 1]
        factors = dataset.factors(i)
        for colour in (factors["shape_rgb"], factors["background_rgb"]):
            assert np.abs(pixels - np.asarray(colour)).max(axis=1).min() < 1e-5


def test_shapes_index_out_of_range():
    dataset = ShapesDataset(3, 16)
    for bad in (-1, 3):
        with pytest.raises(IndexError):
            dataset[bad]


# ---------------------------------------------------------------------------------------------------------
# flips


def test_flip_is_a_pure_function_of_seed_and_draw():
    dataset = ShapesDataset(4, 16, seed=0)
    view, again = RandomFlipView(dataset, seed=7), RandomFlipView(dataset, seed=7)
    original = dataset[2][0]
    flipped_count = 0
    for draw in range(64):
        image, label = view[(2, draw)]
        assert torch.equal(image, again[(2, draw)][0]) and label == dataset[2][1]
        if torch.equal(image, F.horizontal_flip(original)):
            flipped_count += 1
        else:
            assert torch.equal(image, original)
    assert 10 < flipped_count < 54
    assert len(view) == len(dataset)


def test_flip_probability_zero_never_flips():
    dataset = ShapesDataset(2, 16, seed=0)
    view = RandomFlipView(dataset, seed=0, p=0.0)
    assert all(torch.equal(view[(0, draw)][0], dataset[0][0]) for draw in range(32))
    with pytest.raises(ConfigError):
        RandomFlipView(dataset, seed=0, p=1.5)


# ---------------------------------------------------------------------------------------------------------
# train / held-out split


def test_split_is_deterministic_disjoint_and_complete():
    dataset = ShapesDataset(50, 8)
    train, held_out = train_held_out_split(dataset, 7, seed=0)
    assert (train, held_out) == train_held_out_split(dataset, 7, seed=0)
    assert len(held_out) == 7 and len(train) == 43
    assert sorted(train + held_out) == list(range(50))
    assert train == sorted(train) and held_out == sorted(held_out)
    assert train_held_out_split(dataset, 7, seed=1)[1] != held_out
    assert train_held_out_split(dataset, 0, seed=0) == (list(range(50)), [])


def test_split_of_a_folder_is_stable_when_a_file_is_added(tmp_path):
    for i in range(12):
        _write_good_image(tmp_path / f"{i:02d}.bmp", "rgb")
    before = ImageFolderDataset(tmp_path, 8)
    held_before = {before.sample_key(i) for i in train_held_out_split(before, 4, seed=0)[1]}
    _write_good_image(tmp_path / "new.bmp", "rgb")
    after = ImageFolderDataset(tmp_path, 8)
    held_after = {after.sample_key(i) for i in train_held_out_split(after, 4, seed=0)[1]}
    assert len(held_before & held_after) >= 3  # at most the new file displaces one old held-out file
    assert held_after - held_before <= {"new.bmp"}


@pytest.mark.parametrize("held_out_samples", [-1, 10, 11])
def test_split_rejects_bad_held_out_samples(held_out_samples):
    with pytest.raises(ConfigError, match=r"data\.held_out_samples=.* dataset of 10 samples"):
        train_held_out_split(ShapesDataset(10, 8), held_out_samples, seed=0)


def test_spread_picks_reach_every_class_of_a_folder_listed_class_by_class():
    labels = [i // 100 for i in range(1000)]  # 10 classes of 100, in folder order
    picks = spread_picks(list(range(1000)), 16)
    assert len(picks) == len(set(picks)) == 16 and picks[0] == 0
    assert {labels[i] for i in picks} == set(range(10))
    assert spread_picks([3, 5, 7], 16) == [3, 5, 7]


# ---------------------------------------------------------------------------------------------------------
# build_dataset


def test_build_dataset_sources(tmp_path):
    shapes = build_dataset("builtin:shapes", 16, builtin_samples=5, seed=3)
    assert isinstance(shapes, ShapesDataset) and len(shapes) == 5 and shapes.seed == 3
    _write_good_image(tmp_path / "a.png", "rgb")
    folder = build_dataset(str(tmp_path), 16, builtin_samples=5, seed=3)
    assert isinstance(folder, ImageFolderDataset) and len(folder) == 1


@pytest.mark.parametrize(
    ("source", "resolution_px", "match"),
    [
        ("builtin:mnist", 16, r"data\.source='builtin:mnist'.*builtin:shapes"),
        ("hf:/no/such/dataset:train", 16, r"data\.source='hf:/no/such/dataset:train'.*does not exist"),
        (
            "wds:/data/{000..009}.tar",
            16,
            r"data\.source='wds:/data/\{000\.\.009\}\.tar': shard /data/000\.tar",
        ),
        ("builtin:shapes", 4, r"data\.resolution_px=4"),
        ("/definitely/not/a/folder", 16, r"data\.source='/definitely/not/a/folder'"),
    ],
)
def test_build_dataset_errors(source, resolution_px, match):
    with pytest.raises(ConfigError, match=match):
        build_dataset(source, resolution_px, builtin_samples=5, seed=0)
