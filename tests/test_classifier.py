"""Tests for ldm_vae.metrics.classifier: Fréchet distance closed forms, training, accuracy, save/load, and
the factor heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm_vae.metrics import (
    SampleClassifier,
    accuracy,
    frechet_distance,
    load_classifier,
    save_classifier,
    train_classifier,
)
from ldm_vae.metrics.classifier import FactorClassifier, factor_hits, train_factor_classifier


def _features(n: int = 256, d: int = 8, seed: int = 0) -> torch.Tensor:
    """Correlated Gaussian features (n, d), float64 so that adding a shift is exact enough for 1e-9."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen) @ torch.randn(d, d, generator=gen) + 1.0).double()


def _toy_dataset(n: int, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """Trivially separable: class 0 images are dark, class 1 bright, both with noise, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    noise = 0.2 * torch.randn(n, 3, size, size, generator=gen)
    images = (noise + (labels.float() - 0.5).view(n, 1, 1, 1)).clamp(-1, 1)  # means -0.5 and +0.5
    return [(images[i], int(labels[i])) for i in range(n)]


def test_frechet_distance_of_identical_sets_is_zero():
    x = _features()
    assert frechet_distance(x, x.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_mean_shift_is_its_squared_norm():
    x = _features()
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0, 0.0, -1.0])  # the covariance stays exactly the same
    assert frechet_distance(x, x + shift) == pytest.approx(shift.square().sum().item(), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances():
    """Sample covariances exactly diag(a) and diag(b): FD = sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    n, d = 64, 4
    a, b = torch.tensor([1.0, 4.0, 0.25, 9.0]).double(), torch.tensor([4.0, 1.0, 0.25, 0.0]).double()
    centred = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    orthonormal, _ = torch.linalg.qr(centred - centred.mean(dim=0))  # (n, d), centred columns, Q^T Q = I
    x, y = orthonormal * ((n - 1) * a).sqrt(), orthonormal * ((n - 1) * b).sqrt()
    expected = (a.sqrt() - b.sqrt()).square().sum().item()  # 1 + 1 + 0 + 9
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_is_symmetric():
    x, y = _features(seed=0), _features(n=200, seed=1)
    forward, backward = frechet_distance(x, y), frechet_distance(y, x)
    assert forward > 1.0 and forward == pytest.approx(backward, rel=1e-9)


def test_accuracy_on_hand_made_logits():
    logits = torch.tensor(
        [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    )
    labels = torch.tensor([0, 1, 2, 1, 1])  # the fourth is wrong
    assert accuracy(nn.Identity(), logits, labels, batch_size=2) == pytest.approx(0.8)


@pytest.mark.parametrize("resolution_px", [16, 24, 32])
def test_classifier_takes_any_square_resolution(resolution_px):
    classifier = SampleClassifier(num_classes=6, width=8)
    x = torch.rand(2, 3, resolution_px, resolution_px) * 2 - 1
    assert classifier(x).shape == (2, 6) and classifier.features(x).shape == (2, classifier.num_features)


def test_tiny_training_beats_chance_and_is_deterministic():
    train, test = _toy_dataset(64), _toy_dataset(64, seed=1)
    kwargs = dict(num_classes=2, steps=20, batch_size=16, seed=3, lr=3e-3)
    first = train_classifier(train, list(range(64)), **kwargs)
    second = train_classifier(train, list(range(64)), **kwargs)
    images, labels = torch.stack([x for x, _ in test]), torch.tensor([y for _, y in test])
    assert accuracy(first, images, labels) >= 0.9  # chance is 0.5
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), f"{name} differs between equal-seed runs"


def test_save_and_load_round_trip(tmp_path):
    classifier = SampleClassifier(num_classes=3, width=8).eval()
    save_classifier(classifier, tmp_path / "classifier.safetensors")
    loaded = load_classifier(tmp_path / "classifier.safetensors")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert (loaded.num_classes, loaded.width) == (3, 8) and torch.equal(loaded(x), classifier(x))


def test_factor_classifier_has_a_head_per_factor_and_sums_their_losses():
    classifier = FactorClassifier((6, 4), width=8)
    logits = torch.tensor([[0.0, 0, 0, 0, 0, 5, 1, 0, 0, 0], [9.0, 0, 0, 0, 0, 0, 0, 0, 0, 7]])
    labels = torch.tensor([[5, 0], [1, 3]])
    expected = F.cross_entropy(logits[:, :6], labels[:, 0]) + F.cross_entropy(logits[:, 6:], labels[:, 1])
    torch.testing.assert_close(classifier.loss(logits, labels), expected)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    predicted = classifier.predict(x)
    assert predicted.shape == (3, 2) and (predicted[:, 0] < 6).all() and (predicted[:, 1] < 4).all()
    hits = factor_hits(classifier, x, predicted)
    assert hits.shape == (3, 2) and hits.all()
    assert not factor_hits(classifier, x, (predicted + 1) % torch.tensor([6, 4])).any()


def test_factor_classifier_learns_two_independent_factors():
    """Factor 0: a dark or a bright image; factor 1: smooth or noisy (both survive flips and pooling)."""
    n = 128
    factors = torch.stack([torch.arange(n) % 2, torch.arange(n) // 2 % 2], dim=1)  # every combination
    level = (factors[:, 0].float() - 0.5).view(n, 1, 1, 1)  # -0.5 or +0.5
    noise = 0.4 * torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = (level + factors[:, 1].view(n, 1, 1, 1) * noise).clamp(-1, 1)
    classifier = train_factor_classifier(images, factors, (2, 2), steps=20, batch_size=16, seed=0, lr=3e-3)
    assert factor_hits(classifier, images, factors).float().mean(dim=0).min() >= 0.9
    assert factor_hits(classifier, images, 1 - factors).float().mean(dim=0).max() <= 0.1
