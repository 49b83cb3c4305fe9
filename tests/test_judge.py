"""Tests for ldm_vae.metrics.judge's factor judge: prompts and pairs, seen/unseen bookkeeping on hand-made
hits, and a trained judge that passes real images and fails them against the wrong prompts."""

import pytest
import torch

from ldm_vae.data.shapes import HELD_OUT_COMBINATIONS, NAMED_COLOURS, SHAPE_KINDS
from ldm_vae.metrics.classifier import factor_hits
from ldm_vae.metrics.judge import (
    CLASSIFIER_TRAIN_IMAGES,
    COLOURS,
    attribute_accuracy,
    factor_images,
    is_unseen,
    judge_split,
    pair_factors,
    pair_prompts,
    train_factor_judge,
)


def test_the_judge_trains_and_measures_its_floor_on_disjoint_picks_of_every_class():
    labels = [i * 10 // 1541 for i in range(1541)]  # a folder's order: class by class, 10 classes
    judged, reference = judge_split(list(range(1541)), 256, seed=0)
    assert len(reference) == 256 and len(judged) == 1541 - 256 and not set(judged) & set(reference)
    assert {labels[i] for i in reference} == {labels[i] for i in judged} == set(range(10))
    assert judge_split(list(range(1541)), 256, seed=0) == (judged, reference)  # seeded
    assert judge_split(list(range(1541)), 256, seed=1) != (judged, reference)
    judged, reference = judge_split(list(range(7936)), 256, seed=0)  # the built-in shapes: judge capped
    assert len(judged) == CLASSIFIER_TRAIN_IMAGES and not set(judged) & set(reference)
    with pytest.raises(ValueError, match="the judge needs at least 512"):
        judge_split(list(range(500)), 256, seed=0)


def test_pair_prompts_name_every_colour_shape_pair_once():
    prompts, factors = pair_prompts("a {colour} {shape}")
    assert len(set(prompts)) == len(prompts) == len(NAMED_COLOURS) * len(SHAPE_KINDS) == len(factors)
    for prompt, (shape, colour) in zip(prompts, factors.tolist(), strict=True):
        assert prompt == f"a {COLOURS[colour]} {SHAPE_KINDS[shape]}"
    assert is_unseen(factors).sum() == len(HELD_OUT_COMBINATIONS)
    assert is_unseen(pair_factors([("red", "triangle"), ("red", "circle"), ("blue", "circle")])).tolist() == [
        True,
        False,
        True,
    ]


def test_attribute_accuracy_counts_seen_and_unseen_pairs_apart():
    factors = pair_factors([("red", "triangle"), ("red", "circle"), ("green", "ring"), ("blue", "circle")])
    hits = torch.tensor([[True, False], [True, True], [False, True], [True, True]])  # (shape, colour)
    scores = attribute_accuracy(hits, factors)
    assert scores["seen"] == {"shape": 0.5, "colour": 1.0, "both": 0.5, "images": 2}
    assert scores["unseen"] == {"shape": 1.0, "colour": 0.5, "both": 0.5, "images": 2}
    only_seen = attribute_accuracy(hits[1:3], factors[1:3])["unseen"]
    assert only_seen == {"shape": None, "colour": None, "both": None, "images": 0}


def test_factor_images_draw_every_pair_and_report_what_is_drawn():
    images, factors = factor_images(400, 16, seed=5)
    assert images.shape == (400, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert len({tuple(row) for row in factors.tolist()}) == len(NAMED_COLOURS) * len(SHAPE_KINDS)
    assert is_unseen(factors).any(), "the judge must see the pairs the text model never does"
    red = torch.tensor(NAMED_COLOURS["red"]) * 2 - 1  # in [-1, 1]
    for image, (_, colour) in zip(images[:20], factors[:20].tolist(), strict=True):
        pixels = image.flatten(1).T  # (h * w, 3)
        has_red = (pixels - red).abs().max(dim=1).values.lt(0.02).any().item()
        assert has_red == (COLOURS[colour] == "red")


@pytest.mark.slow
def test_the_factor_judge_passes_real_images_and_fails_them_against_wrong_prompts():
    classifier, images, factors, scores = train_factor_judge(
        16, seed=0, classifier_steps=300, eval_images=576
    )
    for group in ("seen", "unseen"):  # 16 px and 300 steps: shapes are 5-11 px, chance is 1/6
        assert scores[group]["colour"] >= 0.95 and scores[group]["shape"] >= 0.5, scores
        assert scores[group]["images"] > 0
    wrong_colour = factors.clone()
    wrong_colour[:, 1] = (factors[:, 1] + 1) % len(COLOURS)
    wrong_shape = factors.clone()
    wrong_shape[:, 0] = (factors[:, 0] + 3) % len(SHAPE_KINDS)
    assert factor_hits(classifier, images, wrong_colour).all(dim=1).float().mean() <= 0.05
    assert factor_hits(classifier, images, wrong_shape).all(dim=1).float().mean() <= 0.15
