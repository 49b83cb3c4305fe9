"""The latent diffusion job: it learns, resumes exactly, runs on 2 processes as on 1, checks the store,
and its pipeline decodes stored latents exactly as the autoencoder reconstructs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PLAIN_STEPS, assert_trained_alike, torchrun
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from ldm_vae.config import AutoencoderTrainConfig, DiffusionConfig, LDMTrainConfig, load_config
from ldm_vae.data import ShapesDataset
from ldm_vae.errors import ConfigError, TrainingDiverged
from ldm_vae.latents import LatentDataset
from ldm_vae.losses import diffusion_loss, min_snr_weight
from ldm_vae.models import build_autoencoder_kl, build_noise_scheduler, build_unet
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.train.cli import main
from ldm_vae.train.ldm import diffusion_draws, load_decoder, train
from ldm_vae.training.checkpoints import list_checkpoints

# one worker under `pytest -n 2`, so the session-scoped fixtures are built once
pytestmark = pytest.mark.xdist_group("test_train_ldm")

REPO = Path(__file__).resolve().parent.parent

# ldm-tiny on the 4x4x4 latents of 48 16-px shapes: train -> checkpoint -> pipeline -> report in seconds.
LDM_TINY_OVERRIDES = [
    "model.block_out_channels=[16,32]",
    "model.norm_num_groups=8",
    "model.attention_head_dim=8",
    "data.num_workers=0",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.log_every_steps=1",
    "train.image_every_steps=3",
    "train.checkpoint_every_steps=3",
    "optim.warmup_steps=2",
    "sample.per_class=1",
    "sample.num_inference_steps=2",
]


@pytest.fixture(scope="session")
def store(kl_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "latents"
    args = ["encode", "--model", str(kl_model), "--builtin-samples", "48", "--shard-size", "16"]
    assert main([*args, "--num-workers", "0", "--dtype", "fp32", "--out", str(out)]) == 0
    return out


def ldm_config(store: Path, run_dir: Path, *overrides: str) -> LDMTrainConfig:
    return load_config(
        LDMTrainConfig,
        "ldm-tiny",
        [*LDM_TINY_OVERRIDES, f"data.latents={store}", f"run_dir={run_dir}", *overrides],
    )


def final_unet(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run_dir)[-1] / "unet.safetensors")


def test_loss_goes_down_on_a_fixed_batch(store, tmp_path):
    cfg = ldm_config(store, tmp_path)
    data = LatentDataset(store, mode="mean")
    latents = torch.stack([data[i][0] for i in range(8)])
    labels = torch.tensor([data[i][1] for i in range(8)])
    torch.manual_seed(0)
    unet = build_unet(cfg.model, data.latent_shape, data.num_classes)
    scheduler = build_noise_scheduler(cfg.diffusion)
    noise, timesteps, _ = diffusion_draws(
        range(8), data.latent_shape, DiffusionConfig(label_dropout=0.0), seed=0
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, _ = diffusion_loss(unet, scheduler, latents, noise, timesteps, labels, min_snr_gamma=5.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_min_snr_weight_is_min_of_snr_and_gamma_over_the_implicit_weight():
    snr = torch.tensor([0.5, 5.0, 50.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.1]))
    torch.testing.assert_close(
        min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 51])
    )


DROPOUT_HALF = DiffusionConfig(label_dropout=0.5)


def test_diffusion_draws_are_keyed_by_position_not_by_batch():
    whole = diffusion_draws(range(10, 16), (4, 2, 2), DROPOUT_HALF, seed=3)
    halves = [
        diffusion_draws(range(10, 13), (4, 2, 2), DROPOUT_HALF, 3),
        diffusion_draws(range(13, 16), (4, 2, 2), DROPOUT_HALF, 3),
    ]
    for a, b, c in zip(whole, *halves, strict=True):
        assert torch.equal(a, torch.cat([b, c]))
    other_seed = diffusion_draws(range(10, 16), (4, 2, 2), DROPOUT_HALF, seed=4)
    assert not torch.equal(whole[0], other_seed[0])


@pytest.mark.slow
def test_train_saves_a_pipeline_that_reloads_and_samples_identically(store, tmp_path):
    run_dir = train(ldm_config(store, tmp_path / "run"))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["step"] == 6 and report["nonfinite_steps"] == 0
    assert report["reload_max_abs_diff"] == 0.0
    assert (run_dir / "samples.png").is_file() and (run_dir / "loss_curves.png").is_file()
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == 6

    pipe = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline")
    manifest = json.loads((store / "manifest.json").read_text())
    assert pipe.config.class_names == manifest["classes"]
    assert pipe.unet.config.num_class_embeds == len(manifest["classes"]) + 1
    assert pipe.vae.config.scaling_factor == pytest.approx(manifest["scaling"]["scaling_factor"], rel=1e-6)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and not pipe.scheduler.config.clip_sample
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[manifest["classes"][0], 1], num_inference_steps=2, guidance_scale=2.0).images
    assert len(images) == 2 and images[0].size == (16, 16)

    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(ldm_config(store, run_dir))
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.slow
def test_export_of_an_ldm_run_rebuilds_the_pipeline_from_its_checkpoint(store, tmp_path):
    """`ldm-vae export RUN_DIR` on a train-ldm run: the pipeline from the last checkpoint's EMA weights."""
    run_dir = train(ldm_config(store, tmp_path / "run"))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["replicas_identical"] and len(report["replica_digests"]) == 1
    trained = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline").unet.state_dict()
    shutil.rmtree(run_dir / "pipeline")
    assert main(["export", str(run_dir)]) == 0
    exported = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline").unet.state_dict()
    assert all(torch.equal(trained[key], exported[key]) for key in trained)
    assert json.loads((run_dir / "report.json").read_text())["reload_max_abs_diff"] == 0.0


@pytest.mark.slow
def test_resume_from_a_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(store, tmp_path):
    uninterrupted = train(ldm_config(store, tmp_path / "a"))
    resumed = tmp_path / "b"
    midway = list_checkpoints(uninterrupted)[0]  # step 3 of 6
    assert midway.name == "step-0000003"
    shutil.copytree(midway, resumed / "checkpoints" / midway.name)
    train(ldm_config(store, resumed, "train.resume=latest"))
    a, b = final_unet(uninterrupted), final_unet(resumed)
    assert all(torch.equal(a[key], b[key]) for key in a), "resumed weights differ from the uninterrupted run"
    ema_a = LatentDiffusionPipeline.from_pretrained(uninterrupted / "pipeline").unet.state_dict()
    ema_b = LatentDiffusionPipeline.from_pretrained(resumed / "pipeline").unet.state_dict()
    assert all(torch.equal(ema_a[key], ema_b[key]) for key in ema_a), "EMA differs after resume"


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(store, tmp_path):
    """Both arms are torchrun launches with one thread per process (see PLAIN_STEPS in conftest)."""
    runs = {}
    for processes in (2, 1):
        runs[processes] = tmp_path / f"procs{processes}"
        torchrun(
            "ldm_vae.train.ldm",
            processes,
            *("ldm-tiny", *LDM_TINY_OVERRIDES, *PLAIN_STEPS),
            *(f"train.batch_size={4 // processes}", "train.max_steps=4"),
            *(f"data.latents={store}", f"run_dir={runs[processes]}"),
        )
    two = json.loads((runs[2] / "report.json").read_text())
    assert two["num_processes"] == 2 and two["replicas_identical"] and len(two["replica_digests"]) == 2
    cfg = ldm_config(store, runs[1])
    torch.manual_seed(cfg.seed)
    data = LatentDataset(store)
    initial = build_unet(cfg.model, data.latent_shape, data.num_classes).state_dict()
    assert_trained_alike(final_unet(runs[2]), final_unet(runs[1]), initial, "unet")


def test_non_finite_losses_stop_training_and_keep_the_last_checkpoint(store, tmp_path):
    cfg = ldm_config(
        store,
        tmp_path / "run",
        "optim.lr=1e30",
        "optim.warmup_steps=0",
        "optim.grad_clip=0",
        "train.checkpoint_every_steps=1",
        "train.max_nonfinite_steps=3",
        "train.max_steps=50",
    )
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row") as error:
        train(cfg)
    last = list_checkpoints(tmp_path / "run")[-1]
    assert str(last) in str(error.value)
    assert json.loads((last / "progress.json").read_text())["nonfinite_steps"] == 0
    assert all(torch.isfinite(t).all() for t in load_file(last / "unet.safetensors").values())


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent_channels=8", "model.latent_channels=8: the store .* holds 4-channel latents"),
        ("model.latent_size=8", "model.latent_size=8: the store .* holds 4x4 latents"),
        (
            "model.block_out_channels=[16,16,16,16] model.attention_levels=[false,false,false,false]",
            "levels downsample by 8, which does not divide",
        ),
        ("model.attention_levels=[true]", "needs one entry per level"),
        ("sample.guidance_scale=3 diffusion.label_dropout=0", "classifier-free guidance needs"),
    ],
)
def test_config_and_store_mismatches_are_one_line_errors(store, tmp_path, capsys, override, message):
    code = main(
        [
            "train-ldm",
            "ldm-tiny",
            *LDM_TINY_OVERRIDES,
            f"data.latents={store}",
            f"run_dir={tmp_path / 'run'}",
            *override.split(),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_different_autoencoder_than_the_store_names_is_refused(store, tmp_path):
    other = tmp_path / "other"
    cfg = load_config(AutoencoderTrainConfig, "kl-tiny", ["data.resolution_px=16", "model.latent_channels=3"])
    build_autoencoder_kl(cfg.model, 16).save_pretrained(other)
    with pytest.raises(ConfigError, match="not the autoencoder that encoded"):
        load_decoder(ldm_config(store, tmp_path / "run", f"data.autoencoder={other}"), LatentDataset(store))


@pytest.mark.parametrize("normalization", ["scale", "shift_scale", "per_channel", "none"])
def test_stored_latents_decoded_by_the_pipeline_reproduce_the_reconstruction(
    kl_model, store, tmp_path, normalization
):
    """encode -> store -> (z - shift) * scale -> pipeline unscaling -> decode == vae(x): no double or missing
    scaling, for every normalization the job offers."""
    cfg = ldm_config(store, tmp_path, "data.mode=mean", f"data.normalization={normalization}")
    data = LatentDataset(store, mode="mean", normalization=normalization)
    pipe = LatentDiffusionPipeline(
        vae=load_decoder(cfg, data),
        unet=build_unet(cfg.model, data.latent_shape, data.num_classes),
        scheduler=build_noise_scheduler(cfg.diffusion),
    )
    z_model = torch.stack([data[i][0] for i in range(6)])
    images = torch.stack([ShapesDataset(48, 16, seed=0)[i][0] for i in range(6)])
    vae = AutoencoderKL.from_pretrained(kl_model).eval()
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.model_space_to_latents(z_model)).sample
        reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample
    torch.testing.assert_close(decoded, reconstruction, rtol=0, atol=1e-4)
    if normalization != "none":
        assert z_model.std().item() == pytest.approx(1.0, abs=0.35)  # roughly unit variance for the UNet
