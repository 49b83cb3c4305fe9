"""LeCAM: the regulariser on a hand-computed case, its moving averages, and exact resume from a state_dict."""

from __future__ import annotations

import pytest
import torch

from ldm_vae.losses.lecam import LeCAM, lecam_regularizer


def test_regularizer_on_a_constructed_case():
    logits_real = torch.tensor([2.0, 0.5, -1.0], requires_grad=True)
    logits_fake = torch.tensor([-1.0, 0.3, 2.0], requires_grad=True)
    ema_real, ema_fake = torch.tensor(1.0), torch.tensor(0.0)
    value = lecam_regularizer(logits_real, logits_fake, ema_real, ema_fake)
    # real logits above ema_fake = 0: 2 and 0.5 (-1 is below: relu 0); fake below ema_real = 1: -1 and 0.3.
    pull_real = (2.0**2 + 0.5**2 + 0.0) / 3
    pull_fake = (2.0**2 + 0.7**2 + 0.0) / 3
    assert value.item() == pytest.approx(pull_real + pull_fake, rel=1e-6)
    value.backward()
    torch.testing.assert_close(logits_real.grad, torch.tensor([2 * 2.0, 2 * 0.5, 0.0]) / 3)
    torch.testing.assert_close(logits_fake.grad, torch.tensor([-2 * 2.0, -2 * 0.7, 0.0]) / 3)


def test_averages_update_in_training_only_and_the_regularizer_uses_the_updated_ones():
    lecam = LeCAM(decay=0.9)
    real, fake = torch.tensor([[1.0, 3.0]]), torch.tensor([[-2.0, 0.0]])  # means 2 and -1
    value = lecam(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.2) and lecam.ema_fake.item() == pytest.approx(-0.1)
    assert value.item() == pytest.approx(
        lecam_regularizer(real, fake, torch.tensor(0.2), torch.tensor(-0.1)).item()
    )
    lecam(real, fake)
    assert lecam.ema_real.item() == pytest.approx(0.9 * 0.2 + 0.1 * 2.0)
    lecam.eval()
    lecam(real + 100, fake)
    assert lecam.ema_real.item() == pytest.approx(0.38), "eval mode must not move the averages"


def test_averages_are_checkpointed_and_resume_exactly():
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(4, 1, 3, 3, generator=g) + 1, torch.randn(4, 1, 3, 3, generator=g) - 1) for _ in range(6)
    ]
    whole = LeCAM(decay=0.7)
    values = [whole(real, fake) for real, fake in batches]

    first = LeCAM(decay=0.7)
    for real, fake in batches[:3]:
        first(real, fake)
    state = first.state_dict()
    assert set(state) == {"ema_real", "ema_fake"}
    resumed = LeCAM(decay=0.7)
    resumed.load_state_dict(state)
    resumed_values = [resumed(real, fake) for real, fake in batches[3:]]
    assert all(torch.equal(a, b) for a, b in zip(values[3:], resumed_values, strict=True))
    assert torch.equal(whole.ema_real, resumed.ema_real) and torch.equal(whole.ema_fake, resumed.ema_fake)
