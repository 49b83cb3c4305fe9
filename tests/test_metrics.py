"""Tests for ldm_vae.metrics: PSNR/SSIM on [-1, 1] images, the bicubic baseline, KL and active channels."""

import math

import pytest
import torch
import torch.nn.functional as F

from ldm_vae.errors import ConfigError
from ldm_vae.metrics import active_channels, bicubic_baseline, kl_per_channel, psnr, ssim


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (b, 3, size, size) in [-0.8, 0.8], so a +0.1 shift stays inside [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, size // 4, size // 4, generator=gen)
    return (F.interpolate(coarse, size=(size, size), mode="bilinear") * 1.6 - 0.8).clamp(-0.8, 0.8)


def test_psnr_identical_is_inf():
    x = _images()
    out = psnr(x, x.clone())
    assert out.shape == (2,) and torch.isinf(out).all() and (out > 0).all()


def test_psnr_constant_shift():
    x = _images()
    out = psnr(x, x + 0.1)  # 0.05 on the [0, 1] scale -> MSE 0.0025
    expected = 10 * math.log10(1 / 0.0025)  # 26.02 dB
    torch.testing.assert_close(out, torch.full((2,), expected), rtol=1e-4, atol=1e-3)


def test_psnr_per_image():
    x = _images(b=3)
    y = x.clone()
    y[1] += 0.1
    out = psnr(x, y)
    assert torch.isinf(out[0]) and torch.isinf(out[2]) and out[1].item() == pytest.approx(26.02, abs=0.01)


def test_ssim_identical_noisy_blurred():
    x = _images(size=64)
    assert ssim(x, x.clone()).shape == (2,)
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(2), rtol=0, atol=1e-5)
    noisy = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert (ssim(x, noisy) < 0.9).all()
    sharp = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    blurred = F.avg_pool2d(sharp, kernel_size=5, stride=1, padding=2, count_include_pad=False)
    assert (ssim(sharp, blurred) < 0.5).all()


def test_bicubic_baseline():
    x = _images(b=2, size=32)
    out = bicubic_baseline(x, factor=8)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    constant = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(bicubic_baseline(constant, factor=4), constant, rtol=0, atol=1e-5)
    assert psnr(x, bicubic_baseline(x, factor=2)).min() > psnr(x, bicubic_baseline(x, factor=8)).max()
    with pytest.raises(ConfigError, match="factor=3"):
        bicubic_baseline(x, factor=3)


def test_kl_per_channel():
    mean = torch.zeros(2, 3, 4, 4)
    logvar = torch.zeros(2, 3, 4, 4)
    mean[:, 1] = 2.0  # KL = 0.5 * 4 = 2 nats per element
    logvar[0, 2] = math.log(2.0)  # KL = 0.5 * (2 - 1 - log 2), in half of the batch
    expected = torch.tensor([0.0, 2.0, 0.25 * (1 - math.log(2.0))])
    torch.testing.assert_close(kl_per_channel(mean, logvar), expected)


def test_active_channels_collapsed_vs_informative():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(64, 4, 2, 2, generator=gen)  # informative: variance ~1 across samples
    means[:, 1] = 0.7  # collapsed: the same mean for every input
    means[:, 3] = 0.3 + 0.01 * torch.randn(64, 2, 2, generator=gen)  # variance ~1e-4, below the threshold
    count, variance = active_channels(means)
    assert count == 2 and variance.shape == (4,)
    assert variance[1] == 0 and variance[3] < 1e-2 < variance[0]
    assert active_channels(means, threshold=1e-5)[0] == 3
