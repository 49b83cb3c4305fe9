"""The judge of generated samples: a small classifier trained on the real images of the same source."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from torch import Tensor
from torch.utils.data import Dataset

from ldm_vae.config import AutoencoderTrainConfig
from ldm_vae.data import build_dataset, stack_items, train_held_out_split
from ldm_vae.metrics.classifier import SampleClassifier, accuracy, frechet_distance, judge, train_classifier
from ldm_vae.training.autoencoder_report import encode_decode

CLASSIFIER_TRAIN_IMAGES = 4096  # real training images the judging classifier sees
CLASSIFIER_STEPS = 400


def judge_data(ae_cfg: AutoencoderTrainConfig) -> tuple[Dataset, list[int], list[int]]:
    """The autoencoder's data source, and its training and held-out indices (the autoencoder's own split)."""
    data = ae_cfg.data
    dataset = build_dataset(data.source, data.resolution_px, data.builtin_samples, ae_cfg.seed)
    return dataset, *train_held_out_split(dataset, data.held_out_samples, ae_cfg.seed)


def train_judge(
    ae_cfg: AutoencoderTrainConfig, classifier_steps: int
) -> tuple[SampleClassifier, Tensor, dict[str, float]]:
    """The judging classifier, trained on real training images; the features (n, d) of the held-out real
    images that samples are compared with; and its own figures: held-out accuracy and the real-vs-real
    feature Fréchet distance (the floor any sample set can reach)."""
    dataset, train_indices, held_out = judge_data(ae_cfg)
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


@torch.no_grad()
def judge_reconstructions(
    classifier: SampleClassifier,
    real_features: Tensor,
    ae_cfg: AutoencoderTrainConfig,
    autoencoder: ModelMixin,
    batch_size: int = 64,
) -> dict[str, float]:
    """The judge on the autoencoder's deterministic reconstructions of the held-out images: the ceiling
    for samples decoded by that autoencoder. If these already lose the class, the autoencoder is the stage
    to fix; if they keep it and samples do not, the diffusion model is."""
    dataset, _, held_out = judge_data(ae_cfg)
    real, labels = stack_items(dataset, held_out)  # (n, 3, R, R) in [-1, 1], (n,)
    device = next(autoencoder.parameters()).device
    reconstructions = torch.cat(
        [
            encode_decode(autoencoder, chunk.to(device))[0].float().clamp(-1, 1).cpu()
            for chunk in real.split(batch_size)
        ]
    )
    return judge(classifier, reconstructions, labels, real_features)
