"""The judges of generated samples, small classifiers trained on real images of the same source.

Class-conditional samples: the class judge (`train_judge`), trained on the autoencoder's own data.
Text-to-image on `builtin:shapes-text`: the factor judge (`train_factor_judge`), with a shape head and a
colour head, trained on named-colour shapes of every colour-shape pair, the held-out ones included: it is
the measuring instrument, not the model, so it must know a red triangle when it sees one, and its accuracy
on real images of seen and of unseen pairs is reported next to the samples'.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from torch import Tensor
from torch.utils.data import Dataset

from ldm_vae.config import AutoencoderTrainConfig
from ldm_vae.data import build_dataset, stack_items, train_held_out_split
from ldm_vae.data.shapes import HELD_OUT_COMBINATIONS, NAMED_COLOURS, SHAPE_KINDS, ShapesDataset
from ldm_vae.metrics.classifier import (
    FactorClassifier,
    SampleClassifier,
    accuracy,
    factor_hits,
    frechet_distance,
    judge,
    train_classifier,
    train_factor_classifier,
)
from ldm_vae.seeds import derive_seed, numpy_generator
from ldm_vae.training.autoencoder_report import encode_decode

CLASSIFIER_TRAIN_IMAGES = 4096  # real training images the judging classifier sees
# 800: at 400 the judges of 5 seeds scored 0.93-0.99 on real held-out shapes and 0.79-0.94 on the demo's
# reconstructions (benchmarks/judge_noise.py); at 800 and at 1200, 4 seeds of 4 scored 1.000 on real images
CLASSIFIER_STEPS = 800
FACTORS = ("shape", "colour")  # the factor judge's heads, in the column order of its factor tensors
COLOURS = list(NAMED_COLOURS)  # colour index = position in this list
FACTOR_EVAL_IMAGES = 1152  # real images the factor judge is scored on: ~32 per colour-shape pair
PROMPT_TEMPLATE = "a {colour} {shape} in the centre"  # one of the shapes captions' templates


def judge_data(ae_cfg: AutoencoderTrainConfig) -> tuple[Dataset, list[int], list[int]]:
    """The autoencoder's data source, and its training and held-out indices (the autoencoder's own split)."""
    data = ae_cfg.data
    dataset = build_dataset(data.source, data.resolution_px, data.builtin_samples, ae_cfg.seed)
    return dataset, *train_held_out_split(dataset, data.held_out_samples, ae_cfg.seed)


def judge_split(train_indices: list[int], reference_count: int, seed: int) -> tuple[list[int], list[int]]:
    """The autoencoder's training indices -> the judge's own (at most CLASSIFIER_TRAIN_IMAGES) and the
    floor's reference images (`reference_count`), disjoint, both a seeded shuffle's picks: a folder lists
    its images class by class, so a slice from either end would hold a few classes only."""
    if len(train_indices) < 2 * reference_count:
        raise ValueError(
            f"{len(train_indices)} training images: the judge needs at least {2 * reference_count} (twice "
            f"data.held_out_samples={reference_count}) to train on and to measure the real-vs-real floor"
        )
    order = numpy_generator(seed, "judge_split").permutation(len(train_indices))
    shuffled = [train_indices[i] for i in order]
    reference = sorted(shuffled[:reference_count])
    return sorted(shuffled[reference_count:][:CLASSIFIER_TRAIN_IMAGES]), reference


def train_judge(
    ae_cfg: AutoencoderTrainConfig, classifier_steps: int, seed: int | None = None
) -> tuple[SampleClassifier, Tensor, dict[str, float]]:
    """The judging classifier, trained on real training images; the features (n, d) of the held-out real
    images that samples are compared with; and its own figures: held-out accuracy and the real-vs-real
    feature Fréchet distance (the floor any sample set can reach). `seed` (default: the autoencoder's)
    draws the judge's images and initialisation; the held-out images it scores against stay the same."""
    seed = ae_cfg.seed if seed is None else seed
    dataset, train_indices, held_out = judge_data(ae_cfg)
    # the floor's second real set: images the classifier never saw (features of images it learned from sit
    # apart) of every class; a 1797-image folder once had neither and reported a floor of 44
    classifier_indices, reference_indices = judge_split(train_indices, len(held_out), seed)
    classifier = train_classifier(
        dataset, classifier_indices, len(dataset.classes), steps=classifier_steps, seed=seed
    )
    real, real_labels = stack_items(dataset, held_out)  # (n, 3, R, R) in [-1, 1], (n,)
    reference = torch.stack([dataset[i][0] for i in reference_indices])
    figures = {
        "classifier_real_held_out_accuracy": accuracy(classifier, real, real_labels),
        "real_vs_real_frechet": frechet_distance(classifier.features(real), classifier.features(reference)),
    }
    with torch.no_grad():
        return classifier, classifier.features(real), figures  # (n, d) real features, as samples get them


@torch.no_grad()
def reconstruct(autoencoder: ModelMixin, images: Tensor, batch_size: int = 64) -> Tensor:
    """The autoencoder's deterministic reconstructions of images (n, 3, R, R) in [-1, 1], on the CPU."""
    device = next(autoencoder.parameters()).device
    return torch.cat(
        [
            encode_decode(autoencoder, chunk.to(device))[0].float().clamp(-1, 1).cpu()
            for chunk in images.split(batch_size)
        ]
    )


def held_out_reconstructions(
    ae_cfg: AutoencoderTrainConfig, autoencoder: ModelMixin
) -> tuple[Tensor, Tensor]:
    """The autoencoder's deterministic reconstructions of the held-out images (n, 3, R, R) in [-1, 1],
    and their classes (n,)."""
    dataset, _, held_out = judge_data(ae_cfg)
    real, labels = stack_items(dataset, held_out)  # (n, 3, R, R) in [-1, 1], (n,)
    return reconstruct(autoencoder, real), labels


def judge_reconstructions(
    classifier: SampleClassifier,
    real_features: Tensor,
    ae_cfg: AutoencoderTrainConfig,
    autoencoder: ModelMixin,
) -> dict[str, float]:
    """The judge on the autoencoder's held-out reconstructions: the ceiling for samples decoded by that
    autoencoder. If these already lose the class, the autoencoder is the stage to fix; if they keep it
    and samples do not, the diffusion model is."""
    return judge(classifier, *held_out_reconstructions(ae_cfg, autoencoder), real_features)


# ---------------------------------------------------------------------------------------------------------
# the factor judge of text-to-image samples


def pair_factors(pairs: list[tuple[str, str]]) -> Tensor:
    """(colour, shape) names -> factors (n, 2) int64: the shape's index in SHAPE_KINDS, the colour's in
    COLOURS."""
    return torch.tensor([[SHAPE_KINDS.index(shape), COLOURS.index(colour)] for colour, shape in pairs])


def pair_prompts(template: str = PROMPT_TEMPLATE) -> tuple[list[str], Tensor]:
    """A prompt for every colour-shape pair (colour-major), and the factors (p, 2) it asks for."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPE_KINDS]
    return [template.format(colour=colour, shape=shape) for colour, shape in pairs], pair_factors(pairs)


def is_unseen(factors: Tensor) -> Tensor:
    """(n,) bool: whether each row (shape, colour) of factors (n, 2) is a pair shapes-text holds out."""
    held_out = pair_factors(list(HELD_OUT_COMBINATIONS))  # (h, 2)
    return (factors[:, None, :] == held_out[None]).all(dim=2).any(dim=1)  # (n, h) -> (n,)


def factor_images(count: int, resolution_px: int, seed: int) -> tuple[Tensor, Tensor]:
    """`count` named-colour shapes of every colour-shape pair (none held out): images (n, 3, R, R) in
    [-1, 1] and their factors (n, 2), as `pair_factors` numbers them."""
    data = ShapesDataset(count, resolution_px, seed, colours="named")
    images = torch.stack([data[i][0] for i in range(count)])
    drawn = [data.factors(i) for i in range(count)]
    return images, pair_factors([(f["colour"], SHAPE_KINDS[f["label"]]) for f in drawn])


def attribute_accuracy(hits: Tensor, factors: Tensor) -> dict[str, dict[str, float]]:
    """Hits (n, 2) of the factor judge on images of factors (n, 2), as accuracy of each attribute and of
    both together, for the seen and the unseen (held-out) colour-shape pairs apart."""
    unseen = is_unseen(factors)
    scores = {}
    for name, rows in (("seen", ~unseen), ("unseen", unseen)):
        chosen = hits[rows].float()  # (m, 2); a group with no images scores None, not NaN
        columns = {factor: chosen[:, j] for j, factor in enumerate(FACTORS)}
        columns["both"] = chosen.all(dim=1).float()
        scores[name] = {key: value.mean().item() if len(chosen) else None for key, value in columns.items()}
        scores[name]["images"] = len(chosen)
    return scores


def train_factor_judge(
    resolution_px: int, seed: int, classifier_steps: int, eval_images: int = FACTOR_EVAL_IMAGES
) -> tuple[FactorClassifier, Tensor, Tensor, dict[str, dict[str, float]]]:
    """The factor judge, trained on CLASSIFIER_TRAIN_IMAGES named-colour shapes of every pair; the real
    evaluation images (n, 3, R, R) and their factors (n, 2), drawn apart from its training images; and its
    attribute accuracy on them (`attribute_accuracy`)."""
    train_images, train_factors = factor_images(
        CLASSIFIER_TRAIN_IMAGES, resolution_px, derive_seed(seed, "judge_images", 0)
    )
    classifier = train_factor_classifier(
        train_images, train_factors, (len(SHAPE_KINDS), len(COLOURS)), steps=classifier_steps, seed=seed
    )
    images, factors = factor_images(eval_images, resolution_px, derive_seed(seed, "judge_images", 1))
    return classifier, images, factors, attribute_accuracy(factor_hits(classifier, images, factors), factors)
