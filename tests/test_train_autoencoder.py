"""The KL-VAE job end to end on CPU: the step's gradients, learning, export, resume, divergence, init_from."""

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
from accelerate import Accelerator
from conftest import TINY_OVERRIDES, assert_same_training, tiny_config
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from ldm_vae.data import ShapesDataset
from ldm_vae.errors import ConfigError, TrainingDiverged
from ldm_vae.losses import PatchDiscriminator
from ldm_vae.models import KLTrainingModule, build_autoencoder_kl, latent_shape
from ldm_vae.train.autoencoder import discriminator_loss, generator_loss, setup, train
from ldm_vae.train.cli import export_run
from ldm_vae.training.checkpoints import list_checkpoints

REPO = Path(__file__).resolve().parent.parent


def tiny_module(cfg, learn_logvar: bool = False) -> KLTrainingModule:
    torch.manual_seed(0)
    vae = build_autoencoder_kl(cfg.model, cfg.data.resolution_px)
    return KLTrainingModule(vae, learn_logvar, 0.0, decoder_only=False)


def fixed_batch(cfg, n: int = 4) -> torch.Tensor:
    dataset = ShapesDataset(n, cfg.data.resolution_px, seed=1)
    return torch.stack([dataset[i][0] for i in range(n)])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = list_checkpoints(run_dir)[-1]
    return {**load_file(checkpoint / "ae.safetensors"), **load_file(checkpoint / "discriminator.safetensors")}


def test_generator_step_leaves_discriminator_without_gradient(tmp_path):
    cfg = tiny_config(tmp_path)
    module, disc = tiny_module(cfg), PatchDiscriminator(3, 8, 2)
    images = fixed_batch(cfg)
    out = module(images, torch.randn((4, *latent_shape(module.vae, 16))))
    last_layer = module.vae.decoder.conv_out.weight
    loss, logs = generator_loss(Accelerator(cpu=True), out, images, disc, last_layer, None, cfg)
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters()), "the discriminator must be unfrozen afterwards"
    assert module.vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert logs["train/adaptive_weight"] > 0


def test_discriminator_step_leaves_autoencoder_without_gradient(tmp_path):
    cfg = tiny_config(tmp_path)
    module, disc = tiny_module(cfg), PatchDiscriminator(3, 8, 2)
    images = fixed_batch(cfg)
    out = module(images, torch.randn((4, *latent_shape(module.vae, 16))))
    loss, _ = discriminator_loss(disc, images, out["sample"])
    loss.backward()
    assert all(p.grad is None for p in module.parameters())
    assert all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize("learn_logvar", [False, True])
def test_loss_goes_down_on_a_fixed_batch(tmp_path, learn_logvar):
    cfg = tiny_config(tmp_path)
    module = tiny_module(cfg, learn_logvar)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=2e-3)
    images, noise = fixed_batch(cfg), torch.zeros((4, *latent_shape(module.vae, 16)))
    accelerator, losses = Accelerator(cpu=True), []
    for _ in range(40):
        out = module(images, noise)
        loss, logs = generator_loss(
            accelerator, out, images, None, module.vae.decoder.conv_out.weight, None, cfg
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["train/rec_loss"].item())
    assert losses[-1] < 0.6 * losses[0]
    if learn_logvar:  # really optimised: it moves towards log(mean reconstruction error) < 0
        assert module.output_logvar.item() < -0.01


def test_a_deterministic_autoencoder_decodes_the_mean_and_keeps_a_point_posterior(tmp_path):
    """model.deterministic: the study's plain AE. The decoder sees the posterior mean whatever the noise,
    and the exported AutoencoderKL's posterior stays a point (std e^-15) through training steps."""
    cfg = tiny_config(tmp_path, "model.deterministic=true", "loss.kl_weight=0.0")
    torch.manual_seed(0)
    module = KLTrainingModule(build_autoencoder_kl(cfg.model, 16), False, 0.0, False, deterministic=True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    images, shape = fixed_batch(cfg), (4, *latent_shape(module.vae, 16))
    for _ in range(3):
        out = module(images, torch.randn(shape))
        loss, _ = generator_loss(Accelerator(cpu=True), out, images, None, None, None, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        first, second = module(images, torch.randn(shape)), module(images, torch.randn(shape))
        assert torch.equal(first["sample"], second["sample"])
        assert torch.equal(first["sample"], module.vae.decode(first["mean"]).sample)
        assert module.vae.encode(images).latent_dist.std.max() < 1e-6


def test_a_deterministic_autoencoder_refuses_what_would_give_it_a_variance(tmp_path):
    with pytest.raises(ConfigError, match="loss.kl_weight=1e-06: a deterministic autoencoder"):
        tiny_config(tmp_path, "model.deterministic=true")
    with pytest.raises(ConfigError, match="model.kind=vq, loss.kl_weight=0.0: a deterministic"):
        tiny_config(tmp_path, "model.deterministic=true", "loss.kl_weight=0.0", kind="vq")
    with pytest.raises(ConfigError, match="optim.weight_decay=0.01: weight decay would pull"):
        tiny_config(tmp_path, "model.deterministic=true", "loss.kl_weight=0.0", "optim.weight_decay=0.01")


@pytest.mark.slow
def test_train_exports_a_diffusers_folder_that_reloads_exactly(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    run_dir = train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    vae, info = AutoencoderKL.from_pretrained(run_dir / "export", output_loading_info=True)
    assert not any(info.values()), info
    assert metrics["export"]["outputs_bit_identical"] and not metrics["export"]["loading_problems"]
    scaling = vae.config.scaling_factor
    assert scaling == pytest.approx(metrics["latent_statistics"]["scaling_factor"]) and scaling != 0.18215

    # Independently: the EMA weights of the last checkpoint, in a model built from our config, give the
    # same bits as the exported folder.
    session_metrics = export_run(str(run_dir), "latest")
    reference = build_autoencoder_kl(cfg.model, 16).eval()
    reference.load_state_dict(AutoencoderKL.from_pretrained(run_dir / "export").state_dict())
    images = fixed_batch(cfg)
    with torch.no_grad():
        assert torch.equal(reference(images).sample, vae.eval()(images).sample)
    assert session_metrics["held_out"]["psnr_db"] == pytest.approx(metrics["held_out"]["psnr_db"])

    held_out = metrics["held_out"]
    assert len(held_out["kl_per_channel"]) == 4 and 0 <= held_out["active_channels"] <= 4
    assert held_out["latent_shape"] == [4, 4, 4] and held_out["bicubic_psnr_db"] > 0
    assert metrics["num_processes"] == 1 and metrics["replicas_identical"]
    for name in ("reconstructions.png", "loss_curves.png", "config.yaml", "stats.jsonl", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert len(list_checkpoints(run_dir)) == cfg.train.checkpoint_total_limit
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))

    before = sorted(p.name for p in run_dir.rglob("*"))
    with pytest.raises(ConfigError, match="already holds checkpoints; continue it with train.resume=latest"):
        train(cfg)  # a second run into the same folder must not overwrite the first
    assert sorted(p.name for p in run_dir.rglob("*")) == before


@pytest.mark.slow
def test_resume_after_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    steps = ["train.max_steps=80", "train.checkpoint_every_steps=1000", "train.image_every_steps=1000"]
    uninterrupted = train(tiny_config(tmp_path / "a", *steps))

    interrupted = tmp_path / "b"
    command = [
        sys.executable,
        "-m",
        "ldm_vae.train.autoencoder",
        "kl-tiny",
        *TINY_OVERRIDES,
        *steps,
        f"run_dir={interrupted}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float sums as in-process
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stats = interrupted / "stats.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not stats.exists() or len(stats.read_text().splitlines()) < 3):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, process.stderr.read().decode()
    (checkpoint,) = list_checkpoints(interrupted)
    stopped_at = json.loads((checkpoint / "progress.json").read_text())["step"]
    assert 3 <= stopped_at < 80, "the checkpoint is written at the step where Ctrl-C arrived"

    train(tiny_config(interrupted, *steps, "train.resume=latest"))
    a, b = final_weights(uninterrupted), final_weights(interrupted)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), "resumed weights differ from the uninterrupted run"
    ema_a = AutoencoderKL.from_pretrained(uninterrupted / "export").state_dict()
    ema_b = AutoencoderKL.from_pretrained(interrupted / "export").state_dict()
    assert all(torch.equal(ema_a[key], ema_b[key]) for key in ema_a), "EMA differs after resume"


@pytest.mark.slow
def test_bf16_autocast_trains_and_still_exports_fp32(tmp_path):
    run_dir = train(tiny_config(tmp_path / "run", "train.mixed_precision=bf16", "train.max_steps=4"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["nonfinite_steps"] == 0 and metrics["export"]["outputs_bit_identical"]
    vae = AutoencoderKL.from_pretrained(run_dir / "export")
    assert all(p.dtype == torch.float32 for p in vae.parameters())


@pytest.mark.slow
def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    # Without the GAN: the adaptive weight is, as in taming, computed per micro-batch, so with it the
    # two differ by design.
    no_gan = ["loss.disc_weight=0", "train.max_steps=4"]
    cfg = tiny_config(tmp_path / "big", *no_gan, "train.batch_size=8")
    accumulated = train(
        tiny_config(tmp_path / "acc", *no_gan, "train.batch_size=4", "train.grad_accum_steps=2")
    )
    assert_same_training(train(cfg), accumulated, cfg)


def test_non_finite_losses_stop_training_and_keep_the_last_checkpoint(tmp_path):
    cfg = tiny_config(
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
    message = str(error.value)
    last = list_checkpoints(tmp_path / "run")[-1]
    assert str(last) in message and "\n" not in message
    state = json.loads((last / "progress.json").read_text())
    assert state["nonfinite_steps"] == 0, "the kept checkpoint predates the non-finite steps"
    assert all(torch.isfinite(t).all() for t in load_file(last / "ae.safetensors").values())


@pytest.mark.slow
def test_init_from_a_diffusers_folder_and_train_the_decoder_only(tmp_path):
    cfg = tiny_config(tmp_path / "first", "train.max_steps=2", "loss.disc_weight=0")
    start = train(cfg) / "export"
    tuned = train(
        tiny_config(
            tmp_path / "tuned",
            f"model.init_from={start}",
            "model.train_decoder_only=true",
            "train.max_steps=3",
            "train.ema_decay=0",
        )
    )
    before = AutoencoderKL.from_pretrained(start).state_dict()
    after = AutoencoderKL.from_pretrained(tuned / "export").state_dict()
    encoder_keys = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_keys = [k for k in before if k.startswith("decoder.")]
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert any(not torch.equal(before[k], after[k]) for k in decoder_keys)


def test_init_from_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    from ldm_vae.train.cli import main

    code = main(
        ["train-ae", "kl-tiny", f"run_dir={tmp_path / 'run'}", f"model.init_from={tmp_path / 'nope'}"]
    )
    assert code == 2 and "model.init_from=" in capsys.readouterr().err


@pytest.mark.slow
def test_gradient_checkpointing_recomputes_and_trains_the_same_weights(tmp_path):
    """train.gradient_checkpointing trades memory for a second forward in the backward; the math, the
    adaptive weight's autograd.grad through the checkpointed decoder included, must not change."""
    assert setup(
        tiny_config(tmp_path / "probe", "train.gradient_checkpointing=true")
    ).run.ema_target.is_gradient_checkpointing
    plain = train(tiny_config(tmp_path / "plain"))  # GAN from step 3 of 6: the whole step
    checkpointed = train(tiny_config(tmp_path / "checkpointed", "train.gradient_checkpointing=true"))
    a, b = final_weights(plain), final_weights(checkpointed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a), "gradient checkpointing changed the training"
