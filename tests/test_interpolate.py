"""Latent interpolation and prior samples: path maths, exact end frames, smoothness, prior scaling, the CLI;
and the posterior-collapse diagnostics (active channels, the warning, aggregate moments)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_vae
from diffusers import AutoencoderKL
from PIL import Image

from ldm_vae.errors import ConfigError
from ldm_vae.losses import LPIPS
from ldm_vae.metrics.latent import active_channels, collapse_warning, latent_moments
from ldm_vae.train.cli import main
from ldm_vae.viz.interpolate import interpolate_pair, lerp, path_smoothness, pixel_rms, slerp
from ldm_vae.viz.prior import prior_samples


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def test_lerp_and_slerp_hit_both_endpoints_exactly():
    z0, z1 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    shift, scale = torch.randn(4, 1, 1), torch.rand(4, 1, 1) + 0.5  # a per-channel prior
    for path in (lerp, slerp, lambda a, b, t: slerp(a, b, t, shift, scale)):
        assert torch.equal(path(z0, z1, 0.0), z0) and torch.equal(path(z0, z1, 1.0), z1)


def test_slerp_keeps_the_norm_of_equal_norm_latents_and_lerp_does_not():
    z0, z1 = torch.randn(1, 64), torch.randn(1, 64)
    z1 = z1 * z0.norm() / z1.norm()
    t = torch.linspace(0, 1, 7)
    norms = slerp(z0.expand(7, -1), z1.expand(7, -1), t).norm(dim=1)
    torch.testing.assert_close(norms, z0.norm().expand(7), rtol=1e-5, atol=0)
    assert lerp(z0, z1, 0.5).norm() < 0.9 * z0.norm()  # nearly orthogonal in 64-d: the chord dips inside


def test_slerp_about_a_shifted_prior_is_slerp_of_the_centred_latents():
    z0, z1, shift, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), 5.0, torch.tensor([0.3, 0.7])
    torch.testing.assert_close(slerp(z0, z1, t, shift, 2.0), slerp(z0 - shift, z1 - shift, t) + shift)


def test_slerp_falls_back_to_lerp_for_parallel_and_opposite_latents():
    z0 = torch.randn(2, 8)
    z1 = torch.stack([3.0 * z0[0], -z0[1]])  # parallel, opposite: sin(angle) = 0
    t = torch.tensor([0.25, 0.5])
    path = slerp(z0, z1, t)
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path, lerp(z0, z1, t))


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_strip_ends_are_the_reconstructions(kind, method):
    vae = tiny_vae(kind)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    frames = interpolate_pair(vae, images[0], images[1], 5, method)
    assert frames.shape == (5, 3, 16, 16) and frames.abs().max() <= 1
    with torch.no_grad():
        for frame, image in ((frames[0], images[0]), (frames[-1], images[1])):
            assert torch.equal(frame, vae(image[None]).sample[0].clamp(-1, 1))
    assert not torch.equal(frames[1], frames[0])


def test_interpolate_pair_rejects_an_unknown_method():
    with pytest.raises(ConfigError, match="method='cubic'"):
        interpolate_pair(tiny_vae("kl"), torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), 3, "cubic")


@pytest.mark.parametrize("distance_name", ["pixel_rms", "lpips"])
def test_smoothness_flags_a_jump(distance_name):
    distance = pixel_rms if distance_name == "pixel_rms" else LPIPS(random_init=True)
    start, end = torch.rand(3, 32, 32) * 2 - 1, torch.rand(3, 32, 32) * 2 - 1
    t = torch.linspace(0, 1, 9).view(-1, 1, 1, 1)
    even = (1 - t) * start + t * end  # (9, 3, 32, 32): equal pixel steps
    jump = even[[0, 0, 0, 0, 4, 5, 6, 7, 8]]  # stand still, then one step of four: same ends
    smooth, jumpy = path_smoothness(even, distance), path_smoothness(jump, distance)
    spread = [f["step_variance"] / f["mean_step"] ** 2 for f in (smooth, jumpy)]  # scale-free
    assert smooth["mean_step"] > 0 and spread[0] < 0.2 and spread[1] > 1.0


def test_pixel_rms_of_a_constant_difference():
    x = torch.zeros(2, 3, 4, 4)
    torch.testing.assert_close(pixel_rms(x, x + 0.25), torch.full((2,), 0.25))


def record_decoded_latents(monkeypatch, vae: AutoencoderKL) -> list[torch.Tensor]:
    """The latents that reach `vae.decode`, in call order."""
    seen, decode = [], vae.decode

    def recording(z: torch.Tensor) -> torch.Tensor:
        seen.append(z)
        return decode(z)

    monkeypatch.setattr(vae, "decode", recording)
    return seen


def test_prior_samples_decode_eps_over_scale_plus_shift(monkeypatch):
    vae = tiny_vae("kl")
    vae.register_to_config(scaling_factor=0.7, shift_factor=0.1)
    seen = record_decoded_latents(monkeypatch, vae)
    images = prior_samples(vae, 3, torch.Generator().manual_seed(1))
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1
    eps = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(seen[0], eps / 0.7 + 0.1)


def test_prior_samples_use_per_channel_statistics_first(monkeypatch):
    vae = tiny_vae("kl")
    mean, std = [1.0, -2.0, 0.0, 3.0], [0.5, 2.0, 1.0, 4.0]
    vae.register_to_config(scaling_factor=0.7, shift_factor=0.1, latents_mean=mean, latents_std=std)
    seen = record_decoded_latents(monkeypatch, vae)
    prior_samples(vae, 2, torch.Generator().manual_seed(1), resolution_px=8)
    eps = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    expected = eps * torch.tensor(std).view(4, 1, 1) + torch.tensor(mean).view(4, 1, 1)
    torch.testing.assert_close(seen[0], expected)


def test_prior_samples_refuse_a_vq_model():
    with pytest.raises(ConfigError, match="VQModel"):
        prior_samples(tiny_vae("vq"), 2)


def test_active_channels_counts_only_channels_that_depend_on_the_input():
    means = torch.randn(16, 4, 2, 2)
    collapsed = means.clone()
    collapsed[:, 2:] = torch.randn(1, 2, 2, 2)  # the same mean for every image
    assert active_channels(means)[0] == 4
    assert active_channels(collapsed)[0] == 2


def test_collapse_warning_fires_once_per_drop():
    assert collapse_warning(None, 4, 4) is None
    assert "posterior collapse? active latent channels is 2 of 4" in collapse_warning(None, 2, 4)
    assert "fell from 4 to 3 of 4" in collapse_warning(4, 3, 4)
    previous, warned_at = None, []
    for step, active in enumerate([4, 4, 3, 3, 3, 4, 2, 2]):  # as the training log calls it
        if collapse_warning(previous, active, 4):
            warned_at.append(step)
        previous = active
    assert warned_at == [2, 6]  # the two drops, once each


def test_latent_moments_add_the_posterior_variance():
    mean = torch.randn(64, 2, 4, 4) * 3 + 1
    logvar = torch.full_like(mean, math.log(4.0))
    m, s = latent_moments(mean)
    torch.testing.assert_close(m, mean.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(s, mean.transpose(0, 1).flatten(1).std(dim=1, correction=0))
    torch.testing.assert_close(latent_moments(mean, logvar)[1], (s.square() + 4.0).sqrt())


def cli_args(model, out, *extra: str) -> list[str]:
    return [
        *("interpolate", "--model", str(model), "--data", "builtin:shapes", "--builtin-samples", "8"),
        *("--pairs", "2", "--frames", "5", "--out", str(out), *extra),
    ]


def test_cli_writes_strips_smoothness_and_prior_samples(tmp_path, capsys):
    tiny_vae("kl").save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(cli_args(tmp_path / "model", out, "--prior", "4", "--seed", "3")) == 0
    report = json.loads((out / "interpolation.json").read_text())
    assert report["distance"] == "pixel-rms" and set(report["methods"]) == {"linear", "slerp"}
    for method, figures in report["methods"].items():
        assert len(figures["per_pair"]) == 2 and figures["mean_step"] > 0
        with Image.open(out / f"interpolation_{method}.png") as strip:
            assert strip.size == (5 * 18 + 2, 2 * 18 + 2)  # 5 frames x 2 pairs of 16 px, 2 px padding
    assert len(report["latent_moments_prior_space"]["std"]) == 4
    assert (out / "prior_samples.png").is_file()
    assert "pixel-rms" in capsys.readouterr().out

    again = tmp_path / "again"  # the seed alone picks the pairs
    assert main(cli_args(tmp_path / "model", again, "--seed", "3", "--method", "slerp")) == 0
    assert json.loads((again / "interpolation.json").read_text())["pairs"] == report["pairs"]


def test_cli_bad_input_exits_2_naming_the_option_and_writes_nothing(tmp_path, capsys):
    tiny_vae("kl").save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    assert main(cli_args(tmp_path / "model", out, "--pairs", "5")) == 2
    assert "--pairs=5 needs 10 images" in capsys.readouterr().err
    tiny_vae("vq").save_pretrained(tmp_path / "vq")
    assert main(cli_args(tmp_path / "vq", out, "--prior", "2")) == 2
    assert "--prior=2" in capsys.readouterr().err
    assert not out.exists()
