"""LatentDataset: exact reads across shards, posterior sampling, normalisation round trips, flips, VQ codes,
DataLoader workers, and one-line errors. Stores are written here from random tensors, not by the writer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from ldm_vae.errors import ConfigError
from ldm_vae.latents.reader import LatentDataset

CLASSES = ["circle", "square", "triangle"]
SCALING = {
    "mean": 0.25,
    "std": 2.0,
    "scaling_factor": 0.5,
    "per_channel_mean": [0.5, -1.0],
    "per_channel_std": [2.0, 0.25],
}


def write_store(
    root: Path,
    kind: str = "kl",
    counts: tuple[int, ...] = (5, 5, 3),
    latent_shape: tuple[int, int, int] = (2, 3, 4),
    storage_dtype: torch.dtype = torch.float16,
    use_flip: bool = False,
) -> dict[str, torch.Tensor]:
    """A store in the writer's format; returns every tensor over all samples, as stored (storage dtype)."""
    n = sum(counts)
    c, h, w = latent_shape
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "labels": torch.randint(len(CLASSES), (n,), generator=generator),
        "sample_index": torch.randperm(10 * n, generator=generator)[:n],  # distinguishable, not sorted
    }
    for suffix in ["", "_flip"] if use_flip else [""]:
        if kind == "kl":
            tensors["mean" + suffix] = torch.randn(n, c, h, w, generator=generator).to(storage_dtype)
            logvar = torch.rand(n, c, h, w, generator=generator) * 2 - 3  # std in [0.22, 0.61]
            tensors["logvar" + suffix] = logvar.to(storage_dtype)
        else:
            tensors["latents" + suffix] = torch.randn(n, c, h, w, generator=generator).to(storage_dtype)
            tensors["indices" + suffix] = torch.randint(16, (n, h, w), generator=generator)
    shards, start = [], 0
    for number, count in enumerate(counts):
        name = f"shard-{number:05d}.safetensors"
        save_file(
            {key: value[start : start + count].contiguous() for key, value in tensors.items()}, root / name
        )
        shards.append({"file": name, "count": count, "sha256": "unchecked"})
        start += count
    manifest = {
        "format": "ldm-vae-latents/1",
        "kind": kind,
        "latent_shape": list(latent_shape),
        "storage_dtype": str(storage_dtype).removeprefix("torch."),
        "num_samples": n,
        "flip": use_flip,
        "classes": CLASSES,
        "shards": shards,
        "scaling": SCALING,
        "autoencoder": {"class": "ignored"},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return tensors


@pytest.mark.parametrize("storage_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_mean_mode_reads_stored_rows_in_order_across_uneven_shards(tmp_path, storage_dtype):
    stored = write_store(tmp_path, storage_dtype=storage_dtype)
    data = LatentDataset(tmp_path, mode="mean")
    raw = LatentDataset(tmp_path, mode="mean", normalization="none")
    assert len(data) == 13 and data.kind == "kl" and data.latent_shape == (2, 3, 4)
    assert data.classes == CLASSES and data.num_classes == 3 and data.manifest["num_samples"] == 13
    for i in range(len(data)):
        z, label = data[i]
        assert z.dtype == torch.float32 and z.shape == (2, 3, 4)
        assert torch.equal(raw[i][0], stored["mean"][i].float())  # storage values, exactly
        assert torch.equal(z, stored["mean"][i].float() * torch.tensor(0.5))
        assert label == int(stored["labels"][i]) and isinstance(label, int)
        assert data.sample_index(i) == int(stored["sample_index"][i])
    assert torch.equal(data[-1][0], data[12][0])


def test_out_of_range_index_raises_index_error(tmp_path):
    write_store(tmp_path)
    data = LatentDataset(tmp_path, mode="mean")
    for index in (13, 100, -14):
        with pytest.raises(IndexError):
            data[index]
    assert len(list(data)) == 13  # the sequence protocol stops at IndexError


def test_sample_mode_draws_fresh_noise_matching_the_posterior(tmp_path):
    stored = write_store(tmp_path, counts=(2,), storage_dtype=torch.float32)
    data = LatentDataset(tmp_path, mode="sample", normalization="none")
    torch.manual_seed(0)
    assert not torch.equal(data[1][0], data[1][0])
    draws = torch.stack([data[1][0] for _ in range(2000)])  # (2000, c, h, w)
    mean, std = stored["mean"][1], (0.5 * stored["logvar"][1]).exp()
    assert torch.allclose(draws.mean(0), mean, atol=0.1 * std.max().item())
    assert torch.allclose(draws.std(0), std, rtol=0.1)


@pytest.mark.parametrize("normalization", ["scale", "shift_scale", "per_channel", "none"])
def test_normalization_matches_hand_computation_and_inverts(tmp_path, normalization):
    stored = write_store(tmp_path)
    data = LatentDataset(tmp_path, mode="mean", normalization=normalization)
    mean = torch.tensor(SCALING["per_channel_mean"]).view(2, 1, 1)
    std = torch.tensor(SCALING["per_channel_std"]).view(2, 1, 1)
    scale, shift = data.scale_and_shift()
    assert scale.shape == shift.shape == (2, 1, 1)
    for i in range(len(data)):
        z = stored["mean"][i].float()
        expected = {
            "scale": z * 0.5,
            "shift_scale": (z - 0.25) * 0.5,
            "per_channel": (z - mean) / std,
            "none": z,
        }[normalization]
        z_model = data[i][0]
        assert torch.allclose(z_model, expected, rtol=1e-6, atol=1e-6)
        assert torch.allclose(z_model / scale + shift, z, rtol=0, atol=1e-6)


def test_flip_probability_picks_the_stored_flips(tmp_path):
    stored = write_store(tmp_path, use_flip=True)
    always = LatentDataset(tmp_path, mode="mean", normalization="none", flip_probability=1.0)
    never = LatentDataset(tmp_path, mode="mean", normalization="none", flip_probability=0.0)
    for i in range(len(always)):
        assert torch.equal(always[i][0], stored["mean_flip"][i].float())
        for _ in range(5):
            assert torch.equal(never[i][0], stored["mean"][i].float())
    half = LatentDataset(tmp_path, mode="mean", normalization="none", flip_probability=0.5)
    torch.manual_seed(0)
    flipped = [torch.equal(half[0][0], stored["mean_flip"][0].float()) for _ in range(50)]
    assert 0 < sum(flipped) < 50


def test_flip_without_stored_flips_is_a_config_error(tmp_path):
    write_store(tmp_path, use_flip=False)
    with pytest.raises(ConfigError, match="flip_probability=0.5"):
        LatentDataset(tmp_path, flip_probability=0.5)


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_vq_store_returns_latents_and_code_ids(tmp_path, mode):
    stored = write_store(tmp_path, kind="vq", use_flip=True)
    data = LatentDataset(tmp_path, mode=mode, normalization="none")
    assert data.kind == "vq"
    for i in range(len(data)):
        assert torch.equal(data[i][0], stored["latents"][i].float())  # deterministic in either mode
        assert torch.equal(data.indices(i), stored["indices"][i])
        assert torch.equal(data.indices(i, flipped=True), stored["indices_flip"][i])


def test_code_ids_of_a_kl_store_are_a_config_error(tmp_path):
    write_store(tmp_path, kind="kl")
    with pytest.raises(ConfigError, match="'vq' only"):
        LatentDataset(tmp_path).indices(0)


def test_dataloader_workers_read_with_their_own_handles(tmp_path):
    stored = write_store(tmp_path)
    data = LatentDataset(tmp_path, mode="mean")
    data[0]  # opens a handle in this process: it must neither be pickled nor shared with workers
    clone = pickle.loads(pickle.dumps(data))
    assert torch.equal(clone[7][0], data[7][0])
    loader = DataLoader(data, batch_size=4, num_workers=2)
    batches = list(loader)
    z = torch.cat([batch[0] for batch in batches])  # (13, c, h, w)
    labels = torch.cat([batch[1] for batch in batches])  # (13,)
    assert batches[0][0].shape == (4, 2, 3, 4)
    assert torch.equal(z, stored["mean"].float() * torch.tensor(0.5))
    assert torch.equal(labels, stored["labels"])


def test_missing_or_bad_manifest_is_a_config_error_naming_the_file(tmp_path):
    manifest = tmp_path / "manifest.json"
    with pytest.raises(ConfigError, match=str(manifest)):
        LatentDataset(tmp_path)
    manifest.write_text("{not json")
    with pytest.raises(ConfigError, match=str(manifest)):
        LatentDataset(tmp_path)
    write_store(tmp_path)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": "ldm-vae-latents/9"}))
    with pytest.raises(ConfigError, match="ldm-vae-latents/9"):
        LatentDataset(tmp_path)


def test_missing_shard_is_a_config_error_naming_it(tmp_path):
    write_store(tmp_path)
    (tmp_path / "shard-00001.safetensors").unlink()
    with pytest.raises(ConfigError, match="shard-00001.safetensors"):
        LatentDataset(tmp_path)
