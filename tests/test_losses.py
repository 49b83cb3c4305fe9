"""Tests for ldm_vae.losses: KL closed form, hinge losses, PatchGAN shapes, adaptive weight, LPIPS."""

import math

import pytest
import torch
from torch import nn
from torchvision.models import vgg16

from ldm_vae.errors import ConfigError
from ldm_vae.losses import (
    LPIPS,
    PatchDiscriminator,
    adaptive_weight,
    default_heads_path,
    default_vgg16_path,
    generator_adversarial_loss,
    hinge_discriminator_loss,
    kl_to_standard_normal,
)

# one worker under `pytest -n 2`, so the session-scoped fixtures are built once
pytestmark = pytest.mark.xdist_group("test_losses")

# ----------------------------------------------------------------------------
# KL


def test_kl_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 4, 1, 1)
    logvar = torch.tensor([0.0, -1.0, 0.7, 1.5]).view(1, 4, 1, 1)
    kl = kl_to_standard_normal(mean, logvar)
    assert kl.shape == (1, 4, 1, 1)
    std = (0.5 * logvar).exp()
    z = mean + std * torch.randn(200_000, 4, 1, 1, generator=gen, dtype=torch.float64)  # z ~ q
    log_q = -0.5 * (((z - mean) / std) ** 2 + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    estimate = (log_q - log_p).mean(dim=0, keepdim=True)
    torch.testing.assert_close(kl.double(), estimate, rtol=0.02, atol=0.0)


def test_kl_zero_at_prior_and_fp32():
    mean = torch.zeros(2, 4, 3, 3, dtype=torch.bfloat16)
    kl = kl_to_standard_normal(mean, torch.zeros_like(mean))
    assert kl.dtype == torch.float32 and kl.shape == (2, 4, 3, 3)
    assert torch.equal(kl, torch.zeros_like(kl))


# ----------------------------------------------------------------------------
# hinge losses and discriminator


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.5])
    # 0.5 * (mean([0, 0.5]) + mean([0, 1.5])) = 0.5 * (0.25 + 0.75)
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5)
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.75)
    loss = hinge_discriminator_loss(real.bfloat16(), fake.bfloat16())
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_discriminator_shapes(norm):
    disc = PatchDiscriminator(norm=norm)
    n_params = sum(p.numel() for p in disc.parameters())
    assert n_params == 2_765_633  # taming's NLayerDiscriminator(ndf=64, n_layers=3): ~2.76M
    with torch.no_grad():
        assert disc(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
        assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)


def test_discriminator_small_and_init():
    disc = PatchDiscriminator(in_channels=4, channels=8, num_layers=2)
    assert disc(torch.randn(2, 4, 32, 32)).shape == (2, 1, 6, 6)
    norms = [m for m in disc.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_groups for m in norms] == [16, 32]
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
    assert PatchDiscriminator().main[0].weight.std().item() == pytest.approx(0.02, rel=0.1)


# ----------------------------------------------------------------------------
# adaptive weight


def _linear_losses(a: float, c: float) -> tuple[torch.Tensor, torch.Tensor, nn.Parameter, torch.Tensor]:
    """y = W x with W (1, 2); nll = a * y, g = c * y, so dnll/dW = a x^T and dg/dW = c x^T."""
    weight = nn.Parameter(torch.tensor([[0.3, -0.7]]))
    x = torch.tensor([3.0, 4.0])  # ||x|| = 5
    y = (weight @ x).sum()
    return a * y, c * y, weight, x


def test_adaptive_weight_by_hand():
    nll, g, weight, x = _linear_losses(a=2.0, c=-0.5)
    lam = adaptive_weight(nll, g, weight)
    expected = (2.0 * 5.0) / (0.5 * 5.0 + 1e-4)
    assert lam.item() == pytest.approx(expected, rel=1e-6)
    assert lam.dtype == torch.float32 and lam.ndim == 0 and not lam.requires_grad
    assert weight.grad is None  # autograd.grad does not accumulate into .grad
    (nll + g).backward()  # the graph was retained for the real backward
    torch.testing.assert_close(weight.grad, 1.5 * x.view(1, 2))


def test_adaptive_weight_clamps_when_gan_grad_vanishes():
    nll, g, weight, _ = _linear_losses(a=2.0, c=0.0)
    assert adaptive_weight(nll, g, weight).item() == pytest.approx(1e4)
    assert adaptive_weight(nll, g, weight, max_weight=7.0).item() == pytest.approx(7.0)
    unrelated = (nn.Parameter(torch.ones(3)) ** 2).sum()  # does not depend on the last layer at all
    assert adaptive_weight(nll, unrelated, weight).item() == pytest.approx(1e4)


def test_adaptive_weight_applies_reduce_grads():
    nll, g, weight, _ = _linear_losses(a=2.0, c=-0.5)
    seen: list[torch.Tensor] = []

    def double_first(grad: torch.Tensor) -> torch.Tensor:
        seen.append(grad.clone())
        return grad * 2.0 if len(seen) == 1 else grad  # the NLL gradient comes first

    plain = adaptive_weight(nll, g, weight)
    reduced = adaptive_weight(nll, g, weight, reduce_grads=double_first)
    assert len(seen) == 2 and seen[0].shape == weight.shape
    assert reduced.item() == pytest.approx(2.0 * plain.item(), rel=1e-6)


# ----------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope="session")
def lpips_random() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS(random_init=True)


def test_lpips_distance_properties(lpips_random):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    d_xy, d_yx = lpips_random(x, y), lpips_random(y, x)
    assert d_xy.shape == (2,) and d_xy.dtype == torch.float32
    assert torch.equal(lpips_random(x, x), torch.zeros(2))
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)


def test_lpips_frozen_eval_and_gradient_reaches_input(lpips_random):
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), lpips_random)
    parent.train()
    assert parent[0].training and not lpips_random.training
    assert not any(m.training for m in lpips_random.modules())
    assert not any(p.requires_grad for p in lpips_random.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips_random(x, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_random.parameters())


def test_lpips_requires_weights():
    with pytest.raises(ConfigError, match="from_files"):
        LPIPS()


def _fake_weight_files(tmp_path, source: LPIPS) -> tuple[str, str]:
    """A features-only VGG16 state dict (plus one classifier key, ignored) and a v0.1-style heads file."""
    vgg_state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    vgg_state["classifier.6.bias"] = torch.zeros(1000)
    heads_state = {f"lin{i}.model.1.weight": h.weight.detach().clone() for i, h in enumerate(source.heads)}
    vgg_path, heads_path = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    torch.save(vgg_state, vgg_path)
    torch.save(heads_state, heads_path)
    return str(vgg_path), str(heads_path)


def test_lpips_from_files_round_trip(tmp_path, lpips_random):
    vgg_path, heads_path = _fake_weight_files(tmp_path, lpips_random)
    loaded = LPIPS.from_files(vgg_path, heads_path)
    assert loaded.is_pretrained and not lpips_random.is_pretrained
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x, y = torch.rand(2, 2, 3, 32, 32).unbind(0)
    torch.testing.assert_close(loaded(x, y), lpips_random(x, y), rtol=0, atol=0)


def test_lpips_layout_matches_torchvision_vgg16(lpips_random):
    with torch.device("meta"):  # shapes only, no 138M-parameter init
        reference = vgg16(weights=None).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items() if k.startswith("features.")}
    ours = {f"features.{k}": tuple(v.shape) for k, v in lpips_random.features.state_dict().items()}
    assert ours == expected


def test_lpips_from_files_errors(tmp_path, lpips_random):
    vgg_path, heads_path = _fake_weight_files(tmp_path, lpips_random)
    missing = str(tmp_path / "nope" / "vgg16.pth")
    with pytest.raises(ConfigError) as err:
        LPIPS.from_files(missing, heads_path)
    assert missing in str(err.value) and "loss.lpips_vgg16_path" in str(err.value)
    assert "vgg16-397923af.pth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        LPIPS.from_files(vgg_path, missing)
    assert (
        missing in str(err.value)
        and "loss.lpips_heads_path" in str(err.value)
        and "pip download" in str(err.value)
    )

    with pytest.raises(ConfigError, match="loss.lpips_heads_path is not set.*pip download"):
        LPIPS.from_files(vgg_path, "")

    bad_heads = torch.load(heads_path, weights_only=True)
    bad_heads["lin5.model.1.weight"] = torch.zeros(1, 8, 1, 1)
    torch.save(bad_heads, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="unexpected keys.*lin5"):
        LPIPS.from_files(vgg_path, str(tmp_path / "extra.pth"))
    bad_heads = {k: v for k, v in bad_heads.items() if k != "lin5.model.1.weight"}
    bad_heads["lin0.model.1.weight"] = torch.zeros(1, 32, 1, 1)
    torch.save(bad_heads, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match="shape.pth.*lin0.model.1.weight"):
        LPIPS.from_files(vgg_path, str(tmp_path / "shape.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="garbage.pth"):
        LPIPS.from_files(str(tmp_path / "garbage.pth"), heads_path)


def test_lpips_default_paths():
    assert default_vgg16_path().endswith("checkpoints/vgg16-397923af.pth")
    heads = default_heads_path()
    assert heads is None or heads.endswith("vgg.pth")
