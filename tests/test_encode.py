"""The encode stage: exact latents, checksummed shards, resumable after a kill, 2 processes == 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm_vae.config import AutoencoderTrainConfig, load_config
from ldm_vae.data import ShapesDataset, train_held_out_split
from ldm_vae.latents import LatentDataset
from ldm_vae.models import build_vqmodel, export_vqmodel
from ldm_vae.train.cli import main

# one worker under `pytest -n 2`, so the session-scoped fixtures are built once
pytestmark = pytest.mark.xdist_group("test_encode")

REPO = Path(__file__).resolve().parent.parent


def assert_batch_close(actual: torch.Tensor, expected: torch.Tensor, scale_of: torch.Tensor | None = None):
    """Equal up to float32 rounding: fp32 convolutions over another batch size (shards of 8 against one
    batch of 45) sum in another order, so allow a few ulps of the largest value of `scale_of`."""
    largest = (expected if scale_of is None else scale_of).abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=64 * torch.finfo(torch.float32).eps * largest)


@pytest.fixture(scope="session")
def vq_model(tmp_path_factory) -> Path:
    cfg = load_config(
        AutoencoderTrainConfig, "vq-tiny", ["data.resolution_px=16", "model.quantizer.num_codes=32"]
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vq") / "model"
    export_vqmodel(build_vqmodel(cfg.model, 16, seed=0)).save_pretrained(folder)
    return folder


def encode_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        *("encode", "--model", str(model), "--data", "builtin:shapes", "--builtin-samples", "45"),
        *("--shard-size", "8", "--batch-size", "4", "--num-workers", "0", "--out", str(out), *extra),
    ]


def shard_digests(out: Path) -> list[str]:
    return [shard["sha256"] for shard in json.loads((out / "manifest.json").read_text())["shards"]]


def direct_batch(n: int = 45) -> torch.Tensor:
    dataset = ShapesDataset(n, 16, seed=0)
    return torch.stack([dataset[i][0] for i in range(n)])


def test_kl_store_holds_the_posterior_and_its_statistics(kl_model, tmp_path):
    out = tmp_path / "store"
    assert main(encode_args(kl_model, out, "--dtype", "fp32", "--flip")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 45 and [s["count"] for s in manifest["shards"]] == [8] * 5 + [5]
    assert manifest["kind"] == "kl" and manifest["latent_shape"] == [4, 4, 4]

    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(kl_model).eval()
    images = direct_batch()
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        flipped = vae.encode(torch.flip(images, dims=[3])).latent_dist
    shards = [load_file(out / s["file"]) for s in manifest["shards"]]
    stored = {key: torch.cat([s[key] for s in shards]) for key in shards[0] if key != "captions"}
    assert torch.equal(stored["sample_index"], torch.arange(45))
    assert manifest["captions"] and manifest["captioned_samples"] == 45  # padded per shard: read by row
    captions = LatentDataset(out, captions=True)
    assert [captions.caption(i) for i in (0, 8, 44)] == [ShapesDataset(45, 16).caption(i) for i in (0, 8, 44)]
    assert_batch_close(stored["mean"], posterior.mean)
    assert_batch_close(stored["logvar"], posterior.logvar)
    assert_batch_close(stored["mean_flip"], flipped.mean)

    # scaling statistics of z = mean + std * eps, computed directly: E[z] = mean, Var over all elements
    mean, var = posterior.mean.double(), posterior.logvar.double().exp()
    expected_mean = mean.mean().item()
    expected_std = ((mean.square() + var).mean() - expected_mean**2).sqrt().item()
    scaling = manifest["scaling"]
    assert scaling["mean"] == pytest.approx(expected_mean, rel=1e-6, abs=1e-9)
    assert scaling["std"] == pytest.approx(expected_std, rel=1e-6)
    assert scaling["scaling_factor"] == pytest.approx(1 / expected_std, rel=1e-6)
    per_channel = mean.mean(dim=(0, 2, 3))
    assert scaling["per_channel_mean"] == pytest.approx(per_channel.tolist(), rel=1e-6, abs=1e-9)


def test_hold_out_leaves_out_exactly_train_aes_held_out_images(kl_model, tmp_path):
    out = tmp_path / "store"
    assert main(encode_args(kl_model, out, "--hold-out", "7", "--seed", "3")) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    train, held_out = train_held_out_split(ShapesDataset(45, 16, seed=3), 7, seed=3)  # what train-ae uses
    stored = torch.cat([load_file(out / s["file"])["sample_index"] for s in manifest["shards"]])
    assert stored.tolist() == train and manifest["num_samples"] == 38
    assert manifest["held_out"] == {"samples": 7, "seed": 3}
    store = LatentDataset(out)
    assert [store.sample_index(i) for i in range(len(store))] == train
    labels = [store[i][1] for i in range(len(store))]  # each latent keeps its own image's label
    assert labels == [ShapesDataset(45, 16, seed=3)[i][1] for i in train]


def test_a_hold_out_as_large_as_the_source_is_refused_naming_the_option(kl_model, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(encode_args(kl_model, out, "--hold-out", "45")) == 2
    assert "--hold-out 45: data.held_out_samples=45 must be in [0, 44]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_reader_returns_what_encoding_the_images_directly_gives(kind, kl_model, vq_model, tmp_path):
    """Round trip through the store: LatentDataset (mean mode) == the autoencoder on the images, scaled."""
    from diffusers import AutoencoderKL, VQModel

    from ldm_vae.latents import LatentDataset

    model_dir = kl_model if kind == "kl" else vq_model
    out = tmp_path / "store"
    assert main(encode_args(model_dir, out, "--dtype", "fp32")) == 0
    store = LatentDataset(out, mode="mean", normalization="scale")
    images = direct_batch()
    with torch.no_grad():
        if kind == "kl":
            direct = AutoencoderKL.from_pretrained(model_dir).eval().encode(images).latent_dist.mean
        else:
            direct = VQModel.from_pretrained(model_dir).eval().encode(images).latents
    scale, shift = store.scale_and_shift()
    assert len(store) == 45 and store.latent_shape == tuple(direct.shape[1:])
    for i in (0, 7, 8, 44):  # both sides of shard boundaries
        latents, label = store[i]
        assert_batch_close(latents / scale + shift, direct[i], direct)
        assert label == ShapesDataset(45, 16, seed=0)[i][1]


def test_vq_store_holds_latents_and_codes(vq_model, tmp_path):
    from diffusers import VQModel

    from ldm_vae.models import image_to_indices

    out = tmp_path / "store"
    assert main(encode_args(vq_model, out, "--dtype", "fp32")) == 0
    vq = VQModel.from_pretrained(vq_model).eval()
    images = direct_batch()
    shards = [load_file(out / s["file"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([s["latents"] for s in shards]), vq.encode(images).latents)
    assert torch.equal(torch.cat([s["indices"] for s in shards]), image_to_indices(vq, images))


def test_an_image_folder_encodes_with_labels_and_lists_skipped_files(kl_model, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    for label, colour in enumerate(["red", "blue"]):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (24 + i, 20), colour).save(folder / f"class{label}" / f"{i}.png")
    (folder / "class1" / "broken.png").write_text("not an image")
    out = tmp_path / "store"
    args = ["encode", "--model", str(kl_model), "--data", str(folder), "--out", str(out), "--shard-size", "4"]
    assert main([*args, "--num-workers", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 10 and manifest["classes"] == ["class0", "class1"]
    assert [entry[0] for entry in manifest["skipped"]] == ["class1/broken.png"]
    labels = torch.cat([load_file(out / shard["file"])["labels"] for shard in manifest["shards"]])
    assert labels.tolist() == [0] * 5 + [1] * 5
    assert main(["encode", "--verify", str(out)]) == 0


def test_a_flipped_byte_fails_verify_naming_the_shard(kl_model, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(encode_args(kl_model, out)) == 0
    assert main(["encode", "--verify", str(out)]) == 0
    shard = out / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["encode", "--verify", str(out)]) == 1
    assert "shard-00002.safetensors: sha256 mismatch" in capsys.readouterr().err


def test_foreign_or_mismatched_output_folders_are_refused(kl_model, vq_model, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(encode_args(kl_model, foreign)) == 2
    assert "not a partial output" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "store"
    assert main(encode_args(kl_model, out)) == 0
    assert main(encode_args(vq_model, out)) == 2
    assert "was encoded with autoencoder=" in capsys.readouterr().err


def run_encode(model: Path, out: Path, processes: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*launcher, "-m", "ldm_vae.train.encode", *encode_args(model, out)[1:]]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_shards_and_two_processes_match_one(kl_model, tmp_path):
    whole = tmp_path / "whole"
    assert run_encode(kl_model, whole).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    process = run_encode(kl_model, killed)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "shard-00001.json").exists():
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not (killed / "manifest.json").exists(), "the kill should land before the end"
    assert run_encode(kl_model, killed).wait(timeout=300) == 0
    assert shard_digests(killed) == shard_digests(whole)
    indices = torch.cat(
        [
            load_file(killed / s)["sample_index"]
            for s in sorted(p.name for p in killed.glob("shard-*.safetensors"))
        ]
    )
    assert torch.equal(indices, torch.arange(45)), "no duplicate or missing sample"

    two = tmp_path / "two"
    completed = run_encode(kl_model, two, processes=2)
    assert completed.wait(timeout=300) == 0, completed.stderr.read().decode()[-2000:]
    assert shard_digests(two) == shard_digests(whole)


def test_position_seeded_stream_reads_are_reproducible_with_any_workers(kl_model, tmp_path):
    """What an LDM job needs for exact resume: the noise of stream position p depends on p only."""
    from torch.utils.data import DataLoader

    from ldm_vae.data import StreamSampler
    from ldm_vae.latents import LatentDataset, PositionSeededLatents

    out = tmp_path / "store"
    assert main(encode_args(kl_model, out, "--flip")) == 0
    view = PositionSeededLatents(LatentDataset(out, mode="sample", flip_probability=0.5), seed=3)
    assert torch.equal(view[(5, 17)][0], view[(5, 17)][0])
    assert not torch.equal(view[(5, 17)][0], view[(5, 18)][0])

    def first_batches(workers: int, start: int) -> list[torch.Tensor]:
        sampler = StreamSampler(range(len(view)), 4, 0, 1, seed=3, start_position=start)
        loader = DataLoader(view, batch_size=4, sampler=sampler, num_workers=workers)
        batches = iter(loader)
        return [next(batches)[0] for _ in range(3)]

    whole = first_batches(0, 0)
    resumed = first_batches(2, 4)  # a run resumed after one step, with two workers
    assert all(torch.equal(a, b) for a, b in zip(whole[1:], resumed[:2], strict=True))
