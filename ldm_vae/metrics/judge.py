"""The judge of generated samples: a small classifier trained on the real images of the same source."""

from __future__ import annotations

import torch
from torch import Tensor

from ldm_vae.config import AutoencoderTrainConfig
from ldm_vae.data import build_dataset, stack_items, train_held_out_split
from ldm_vae.metrics.classifier import SampleClassifier, accuracy, frechet_distance, train_classifier

CLASSIFIER_TRAIN_IMAGES = 4096  # real training images the judging classifier sees
CLASSIFIER_STEPS = 400


def train_judge(
    ae_cfg: AutoencoderTrainConfig, classifier_steps: int
) -> tuple[SampleClassifier, Tensor, dict[str, float]]:
    """The judging classifier, trained on real training images; the features (n, d) of the held-out real
    images that samples are compared with; and its own figures: held-out accuracy and the real-vs-real
    feature Fréchet distance (the floor any sample set can reach)."""
    dataset = build_dataset(
        ae_cfg.data.source, ae_cfg.data.resolution_px, ae_cfg.data.builtin_samples, ae_cfg.seed
    )
    train_indices, held_out = train_held_out_split(dataset, ae_cfg.data.held_out_samples, ae_cfg.seed)
    classifier = train_classifier(
        dataset,
        train_indices[:CLASSIFIER_TRAIN_IMAGES],
        len(dataset.classes),
        steps=classifier_steps,
        seed=ae_cfg.seed,
    )
    real, real_labels = stack_items(dataset, held_out)  # (n, 3, R, R) in [-1, 1], (n,)
    reference = torch.stack([dataset[i][0] for i in train_indices[-len(held_out) :]])
    figures = {
        "classifier_real_held_out_accuracy": accuracy(classifier, real, real_labels),
        "real_vs_real_frechet": frechet_distance(classifier.features(real), classifier.features(reference)),
    }
    with torch.no_grad():
        return classifier, classifier.features(real), figures  # (n, d) real features, as samples get them
