"""LatentDiffusionPipeline: save/load, scheduler swaps, label validation, guidance and latent scaling."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_unet, tiny_vae
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    VQModel,
)

from ldm_vae.pipelines import LatentDiffusionPipeline


def shifted_tiny_vae(kind: str) -> AutoencoderKL | VQModel:
    """tiny_vae with a KL scaling and shift factor, so unscaling mistakes show."""
    vae = tiny_vae(kind)
    if kind == "kl":
        vae.register_to_config(scaling_factor=0.7, shift_factor=0.1)
    return vae


def make_pipe(kind: str = "kl", num_class_embeds: int | None = 4) -> LatentDiffusionPipeline:
    torch.manual_seed(0)
    vae = shifted_tiny_vae(kind)
    channels = 4 if kind == "kl" else 3
    pipe = LatentDiffusionPipeline(
        vae=vae,
        unet=tiny_unet(channels, num_class_embeds),
        scheduler=DDPMScheduler(num_train_timesteps=50, clip_sample=False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe() -> LatentDiffusionPipeline:
    return make_pipe("kl")


def assert_equal(a, b, atol=0.0):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def sample(pipe, seed: int = 0, **kwargs) -> torch.Tensor:
    kwargs = {"num_inference_steps": 3, "output_type": "pt", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_save_load_round_trip_gives_identical_samples(tmp_path, kind):
    pipe = make_pipe(kind)
    before = sample(pipe, class_labels=[0, 2], guidance_scale=2.0)
    pipe.save_pretrained(tmp_path)
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vae) is type(pipe.vae)
    assert before.shape == (2, 3, 16, 16)
    assert 0.0 <= before.min() and before.max() <= 1.0
    assert_equal(sample(loaded, class_labels=[0, 2], guidance_scale=2.0), before)


@pytest.mark.parametrize(
    "swap",
    [
        lambda config: DDIMScheduler.from_config(config),
        lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    ],
    ids=["ddim", "dpmsolver++"],
)
def test_scheduler_swap_runs(pipe, swap):
    pipe.scheduler = swap(pipe.scheduler.config)
    images = sample(pipe, batch_size=2)
    assert images.shape == (2, 3, 16, 16)
    assert torch.isfinite(images).all()


def test_output_types(pipe):
    assert sample(pipe, batch_size=2, output_type="np").shape == (2, 16, 16, 3)
    pil = sample(pipe, batch_size=2, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (16, 16)
    assert isinstance(pipe(num_inference_steps=2, output_type="pt", return_dict=False), tuple)


@pytest.mark.parametrize("label", [-1, 3, 7])
def test_out_of_range_label_raises(pipe, label):
    with pytest.raises(ValueError, match=rf"class label {label} .*\[0, 3\)"):
        sample(pipe, class_labels=[0, label])


def test_unconditional_unet_rejects_guidance_and_labels():
    pipe = make_pipe("kl", num_class_embeds=None)
    assert sample(pipe, batch_size=2).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(pipe, guidance_scale=3.0)
    with pytest.raises(ValueError, match="class_labels"):
        sample(pipe, class_labels=[0])


def test_wrong_latents_shape_raises(pipe):
    with pytest.raises(ValueError, match="latents"):
        sample(pipe, batch_size=2, latents=torch.randn(2, 4, 4, 4))


def test_guidance_is_applied_and_sampling_is_deterministic(pipe):
    # Make the class embedding matter enough that cond and uncond predictions differ visibly.
    with torch.no_grad():
        pipe.unet.class_embedding.weight.normal_(std=5.0)
    plain = sample(pipe, class_labels=[0, 1, 2], guidance_scale=1.0)
    guided = sample(pipe, class_labels=[0, 1, 2], guidance_scale=3.0)
    assert plain.shape == guided.shape == (3, 3, 16, 16)
    assert (plain - guided).abs().max() > 1e-4
    assert_equal(sample(pipe, class_labels=[0, 1, 2], guidance_scale=3.0), guided)


def test_random_labels_follow_the_generator(pipe):
    assert_equal(sample(pipe, batch_size=3), sample(pipe, batch_size=3))


def test_scaling_round_trip_and_decode(pipe):
    z = torch.randn(2, 4, 4, 4)
    assert_equal(pipe.model_space_to_latents(pipe.latents_to_model_space(z)), z, atol=1e-6)
    torch.testing.assert_close(pipe.latents_to_model_space(z), (z - 0.1) * 0.7)

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        mean = pipe.vae.encode(x).latent_dist.mean
        round_tripped = pipe.model_space_to_latents(pipe.latents_to_model_space(mean))
        torch.testing.assert_close(pipe.vae.decode(round_tripped).sample, pipe.vae.decode(mean).sample)


def test_per_channel_latents_mean_std_take_precedence(pipe):
    pipe.vae.register_to_config(latents_mean=[0.1, 0.2, 0.3, 0.4], latents_std=[1.0, 2.0, 4.0, 0.5])
    z = torch.randn(2, 4, 4, 4)
    mean = torch.tensor([0.1, 0.2, 0.3, 0.4]).view(1, 4, 1, 1)
    std = torch.tensor([1.0, 2.0, 4.0, 0.5]).view(1, 4, 1, 1)
    torch.testing.assert_close(pipe.latents_to_model_space(z), (z - mean) / std)
    assert_equal(pipe.model_space_to_latents(pipe.latents_to_model_space(z)), z, atol=1e-6)
