"""Training recipes: the flow-matching objective, timestep sampling, noise schedules (zero terminal SNR),
flow samplers in the pipeline, and EQ-VAE's equivariance loss on constructed autoencoders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config, tiny_unet, tiny_vae
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from ldm_vae.config import AutoencoderTrainConfig, DiffusionConfig, LDMTrainConfig, load_config
from ldm_vae.errors import ConfigError
from ldm_vae.losses import (
    Transform,
    diffusion_loss,
    draw_timesteps,
    draw_transform,
    equivariance_loss,
    transformed_decode,
)
from ldm_vae.losses.diffusion import min_snr_weight, signal_to_noise
from ldm_vae.models import build_noise_scheduler, sampling_scheduler
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.train.autoencoder import train as ae_train
from ldm_vae.train.cli import main
from ldm_vae.train.ldm import train as ldm_train
from ldm_vae.training.tracking import read_stats

T = 1000

# ---------------------------------------------------------------------------------------------------------
# flow matching


def test_flow_loss_is_the_velocity_mse_on_the_straight_path():
    scheduler = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    unet = tiny_unet(4)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0.0, 250.0, 731.5])  # s = t / T
    labels = torch.tensor([0, 1, 2])
    loss, per_sample = diffusion_loss(unet, scheduler, x0, noise, timesteps, labels)

    s = (timesteps / T).view(-1, 1, 1, 1)
    with torch.no_grad():
        prediction = unet((1 - s) * x0 + s * noise, timesteps, class_labels=labels).sample
    expected = (prediction - (noise - x0)).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(per_sample, expected)
    torch.testing.assert_close(loss.detach(), expected.mean())


def test_flow_path_is_diffusers_forward_process():
    """Our x_t = (1 - s) x0 + s eps is what FlowMatchEulerDiscreteScheduler.scale_noise adds, at its own
    timesteps, so training and sampling agree on the direction of time and on s = t / T."""
    scheduler = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    scheduler.set_timesteps(10)
    x0, noise = torch.randn(2, 1, 4, 8, 8)
    for t in scheduler.timesteps[[0, 4, 9]]:
        s = t / T
        theirs = scheduler.scale_noise(x0, t.reshape(1), noise)
        torch.testing.assert_close(theirs, (1 - s) * x0 + s * noise)


def test_min_snr_weight_for_flow_is_min_snr_gamma_times_s_squared():
    scheduler = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    timesteps = torch.tensor([0.0, 100.0, 500.0, 900.0, 1000.0])
    s = timesteps / T
    weight = min_snr_weight(signal_to_noise(scheduler, timesteps), 5.0, "flow")
    expected = torch.minimum(((1 - s) / s).square().nan_to_num(posinf=math.inf), torch.tensor(5.0)) * s**2
    torch.testing.assert_close(weight, expected.nan_to_num(0.0))
    assert weight[0] == 0 and torch.isfinite(weight).all()  # the clean end (SNR = inf) gets no weight


def test_min_snr_on_the_flow_loss_weights_each_sample():
    scheduler = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    unet = tiny_unet(4)
    x0, noise = torch.randn(2, 2, 4, 8, 8)
    timesteps = torch.tensor([200.0, 800.0])
    _, plain = diffusion_loss(unet, scheduler, x0, noise, timesteps, torch.tensor([0, 1]))
    _, weighted = diffusion_loss(unet, scheduler, x0, noise, timesteps, torch.tensor([0, 1]), 5.0)
    s = timesteps / T
    torch.testing.assert_close(weighted, plain * torch.minimum((1 - s) ** 2, 5.0 * s**2))


# ---------------------------------------------------------------------------------------------------------
# timestep sampling


@pytest.mark.parametrize("prediction_type", ["epsilon", "flow"])
def test_timestep_draws_uniform_and_logit_normal(prediction_type):
    def draws(sampling: str) -> torch.Tensor:
        cfg = DiffusionConfig(prediction_type=prediction_type, timestep_sampling=sampling)
        return draw_timesteps(cfg, 4000, torch.Generator().manual_seed(0))

    uniform, logit_normal = draws("uniform"), draws("logit_normal")
    for t in (uniform, logit_normal):
        assert t.dtype == (torch.float32 if prediction_type == "flow" else torch.int64)
        assert 0 <= t.min() and t.max() < T
    middle = lambda t: ((t >= T / 4) & (t < 3 * T / 4)).float().mean().item()  # noqa: E731
    # P(0.25 < sigmoid(z) < 0.75) = P(|z| < ln 3) = 0.728 for z ~ N(0, 1); 0.5 for uniform
    assert abs(middle(uniform) - 0.5) < 0.03
    assert abs(middle(logit_normal) - 0.728) < 0.03
    torch.testing.assert_close(draws("logit_normal"), logit_normal)  # a function of the generator


def test_logit_mean_shifts_the_draws_towards_noise():
    cfg = DiffusionConfig(timestep_sampling="logit_normal", logit_mean=1.0)
    t = draw_timesteps(cfg, 4000, torch.Generator().manual_seed(0))
    assert abs((t >= T / 2).float().mean().item() - 0.841) < 0.03  # P(z > -1), z ~ N(0, 1)


# ---------------------------------------------------------------------------------------------------------
# noise schedules


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_schedules_follow_their_formulas(schedule):
    cfg = DiffusionConfig(beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    abar = build_noise_scheduler(cfg).alphas_cumprod.double()
    t = torch.arange(T, dtype=torch.float64)
    if schedule == "linear":  # Ho et al. 2020
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif schedule == "scaled_linear":  # LDM / SD: linear in sqrt(beta)
        betas = torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2
    else:  # Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999
        f = lambda x: torch.cos((x / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = (1 - f(t + 1) / f(t)).clamp(max=0.999)
    torch.testing.assert_close(abar, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-7)


def test_zero_terminal_snr_rescales_sqrt_abar_affinely_to_zero():
    """Lin et al. 2024, Algorithm 1: shift sqrt(abar) so the last is 0, scale so the first is unchanged."""
    before = build_noise_scheduler(DiffusionConfig()).alphas_cumprod.double().sqrt()
    scheduler = build_noise_scheduler(DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    after = scheduler.alphas_cumprod.double().sqrt()
    expected = (before - before[-1]) * before[0] / (before[0] - before[-1])
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-6)
    assert after[-1] == 0 and before[-1] > 0.06  # SD's schedule leaves sqrt(abar_T) = 0.068 of signal
    assert signal_to_noise(scheduler, torch.tensor([T - 1]))[0] == 0


def test_samplers_keep_the_training_schedule_and_start_at_pure_noise():
    training = build_noise_scheduler(DiffusionConfig(prediction_type="v_prediction", zero_terminal_snr=True))
    for name in ("ddpm", "ddim", "dpm"):
        sampler = sampling_scheduler(training, name)
        assert sampler.config.prediction_type == "v_prediction"
        sampler.set_timesteps(10)
        assert sampler.timesteps[0] == T - 1, name  # trailing spacing visits the zero-SNR step
    ddim = sampling_scheduler(training, "ddim")
    assert isinstance(ddim, DDIMScheduler)
    torch.testing.assert_close(ddim.alphas_cumprod, training.alphas_cumprod)


# ---------------------------------------------------------------------------------------------------------
# flow sampling in the pipeline


class OracleVelocity(UNet2DModel):
    """The exact velocity field when all data is one point x*: x_t = (1 - s) x* + s eps gives
    v = eps - x* = (x_t - x*) / s. Any exact flow sampler must land on x*."""

    target: torch.Tensor

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        s = torch.as_tensor(timestep, dtype=sample.dtype) / T
        return UNet2DOutput(sample=(sample - self.target) / s)


@pytest.mark.parametrize("name", ["ddim", "dpm", "ddpm"])
def test_flow_samplers_integrate_the_velocity_to_the_data(name):
    unet = OracleVelocity(
        sample_size=4,
        in_channels=2,
        out_channels=2,
        block_out_channels=(8,),
        norm_num_groups=8,
        down_block_types=("DownBlock2D",),
        up_block_types=("UpBlock2D",),
        layers_per_block=1,
    )
    unet.target = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    training = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    pipe = LatentDiffusionPipeline(vae=None, unet=unet, scheduler=sampling_scheduler(training, name))
    pipe.set_progress_bar_config(disable=True)
    sample = pipe.denoise(batch_size=3, num_inference_steps=8, generator=torch.Generator().manual_seed(0))
    # diffusers' DPM-Solver hands the model integer timesteps round(s * T): s is then known to 1/T only
    tolerance = 1e-2 if name == "dpm" else 1e-4
    torch.testing.assert_close(sample, unet.target.expand(3, -1, -1, -1), atol=tolerance, rtol=tolerance)


def test_a_flow_pipeline_samples_class_conditional_images_with_guidance(tmp_path):
    training = build_noise_scheduler(DiffusionConfig(prediction_type="flow"))
    pipe = LatentDiffusionPipeline(vae=tiny_vae("kl"), unet=tiny_unet(4), scheduler=training)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=3, output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    pipe.save_pretrained(tmp_path)
    reloaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(reloaded.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(sampling_scheduler(reloaded.scheduler, "dpm"), DPMSolverMultistepScheduler)
    # a flow sampler swapped back to DDIM stays on the flow path
    assert isinstance(
        sampling_scheduler(sampling_scheduler(training, "dpm"), "ddim"), FlowMatchEulerDiscreteScheduler
    )


# ---------------------------------------------------------------------------------------------------------
# EQ-VAE equivariance loss

ALL_TRANSFORMS = [Transform(s, k) for s in (1.0, 0.75, 0.5) for k in range(4) if (s, k) != (1.0, 0)]


def ramp(side: int) -> torch.Tensor:
    """A left-to-right ramp (1, 1, side, side): not invariant under rotation."""
    return torch.linspace(-1, 1, side).expand(1, 1, side, side)


@pytest.mark.parametrize("transform", ALL_TRANSFORMS, ids=str)
def test_an_identity_autoencoder_is_exactly_equivariant(transform):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = images.clone()  # f = 1: E = D = identity
    assert equivariance_loss(*transformed_decode(lambda z: z, latents, images, transform)) == 0


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_pooling_autoencoder_on_blocky_images_is_rotation_equivariant_at_f4(quarter_turns):
    """E = 4x4 average pool, D = nearest 4x upsampling reconstruct images constant on 4x4 blocks exactly,
    and both commute with rotations: the loss is zero, and the sizes line up (8x8 latents, 32 px)."""
    blocks = torch.randint(-8, 9, (2, 3, 8, 8)) / 8  # dyadic values: the 4x4 means are exact
    images = blocks.repeat_interleave(4, -1).repeat_interleave(4, -2)  # (2, 3, 32, 32)
    latents = torch.nn.functional.avg_pool2d(images, 4)
    decode = lambda z: z.repeat_interleave(4, -1).repeat_interleave(4, -2)  # noqa: E731
    assert equivariance_loss(*transformed_decode(decode, latents, images, Transform(1.0, quarter_turns))) == 0


def test_a_perfect_but_non_equivariant_autoencoder_is_penalised():
    """E(x) = x + r, D(z) = z - r with a ramp r reconstructs exactly (D(E(x)) = x), but its latents carry
    a pattern that rotation moves: D(rot(E(x))) - rot(x) = rot(r) - r."""
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = images + ramp(16)
    decode = lambda z: z - ramp(z.shape[-1])  # noqa: E731
    torch.testing.assert_close(decode(latents), images)
    quarter = Transform(1.0, 1)
    expected = (torch.rot90(ramp(16), 1, dims=(-2, -1)) - ramp(16)).square().mean()
    torch.testing.assert_close(
        equivariance_loss(*transformed_decode(decode, latents, images, quarter)), expected
    )
    assert equivariance_loss(*transformed_decode(decode, latents, images, quarter), "l1") > 0
    assert equivariance_loss(*transformed_decode(decode, latents, images, Transform(1.0, 2))) > 0


def test_equivariance_gradient_reaches_the_decoder():
    decoder = torch.nn.Conv2d(3, 3, 1)
    images = torch.rand(2, 3, 8, 8)
    decoded, target = transformed_decode(decoder, images.clone(), images, Transform(0.5, 1))
    assert decoded.shape == target.shape == (2, 3, 4, 4)
    equivariance_loss(decoded, target).backward()
    assert decoder.weight.grad is not None and decoder.weight.grad.abs().sum() > 0


def test_draw_transform_covers_every_non_identity_transform():
    generator = torch.Generator().manual_seed(0)
    drawn = {draw_transform(generator) for _ in range(400)}
    assert drawn == set(ALL_TRANSFORMS)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [draw_transform(a) for _ in range(20)] == [draw_transform(b) for _ in range(20)]


# ---------------------------------------------------------------------------------------------------------
# config rules


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("ldm-tiny", ["diffusion.zero_terminal_snr=true"], "use prediction_type=v_prediction"),
        (
            "ldm-tiny",
            ["diffusion.prediction_type=flow", "diffusion.zero_terminal_snr=true"],
            "flow has no betas",
        ),
        (
            "ldm-tiny",
            ["diffusion.timestep_sampling=logit_normal", "diffusion.logit_std=0"],
            "diffusion.logit_std",
        ),
        ("vq-tiny", ["loss.equivariance_weight=0.5"], "only for model.kind=kl"),
        ("kl-tiny", ["loss.equivariance_weight=-1"], "loss.equivariance_weight"),
    ],
)
def test_contradictory_recipe_options_are_refused_in_one_line(preset, overrides, message):
    cls = LDMTrainConfig if preset.startswith("ldm") else AutoencoderTrainConfig
    with pytest.raises(ConfigError, match=message):
        load_config(cls, preset, overrides)


def test_transformed_decode_sizes_at_f4():
    """8x8 latents of 32 px images downscaled by 0.75: a 6x6 latent decodes to 24 px, the target is 24 px."""
    latents, images = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32, 32)
    decode = lambda z: z[:, :3].repeat_interleave(4, -1).repeat_interleave(4, -2)  # noqa: E731
    decoded, target = transformed_decode(decode, latents, images, Transform(0.75, 3))
    assert decoded.shape == target.shape == (2, 3, 24, 24)


# ---------------------------------------------------------------------------------------------------------
# the jobs with the new options


def test_train_ae_with_equivariance_adds_and_logs_the_term(tmp_path):
    cfg = tiny_config(tmp_path / "eq", "loss.equivariance_weight=0.5", "loss.disc_weight=0")
    ae_train(cfg)
    stats = read_stats(tmp_path / "eq")
    values = [row["train/equivariance_loss"] for row in stats if "train/equivariance_loss" in row]
    assert len(values) == 6 and all(v > 0 for v in values)


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        ["diffusion.prediction_type=flow"],
        ["diffusion.prediction_type=v_prediction", "diffusion.zero_terminal_snr=true"],
    ],
    ids=["flow", "v-zero-snr"],
)
def test_train_ldm_with_a_new_objective_exports_a_pipeline_that_samples_it(kl_model, tmp_path, recipe):
    store = tmp_path / "latents"
    args = ["encode", "--model", str(kl_model), "--builtin-samples", "16", "--num-workers", "0"]
    assert main([*args, "--out", str(store)]) == 0
    overrides = [
        *("model.block_out_channels=[16,32]", "model.norm_num_groups=8", "model.attention_head_dim=8"),
        *("data.num_workers=0", "train.batch_size=4", "train.max_steps=3", "train.log_every_steps=1"),
        *("sample.per_class=1", "sample.num_inference_steps=2", "diffusion.timestep_sampling=logit_normal"),
        f"data.latents={store}",
        f"run_dir={tmp_path / 'ldm'}",
        *recipe,
    ]
    run_dir = ldm_train(load_config(LDMTrainConfig, "ldm-tiny", overrides))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["reload_max_abs_diff"] == 0
    scheduler = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline").scheduler
    flow = recipe == ["diffusion.prediction_type=flow"]
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) == flow  # ldm-tiny samples with ddim
    assert flow or scheduler.config.rescale_betas_zero_snr
    assert all(math.isfinite(row["train/loss"]) for row in read_stats(run_dir))
