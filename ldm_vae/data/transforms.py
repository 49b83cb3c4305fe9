"""Image transforms: the deterministic resize-and-crop, and a horizontal flip keyed by (seed, draw).

Augmentation follows the LDM autoencoder recipe (Rombach et al. 2022): resize the shorter side, centre-crop,
random horizontal flip. The flip is a pure function of (seed, draw) rather than of a worker's RNG stream, so a
resumed run sees exactly the images an uninterrupted one would, whatever the number of DataLoader workers.
"""

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ldm_vae.errors import ConfigError
from ldm_vae.seeds import torch_generator


def image_transform(resolution_px: int) -> v2.Compose:
    """PIL RGB image -> (3, R, R) float32 in [-1, 1], R = resolution_px: shorter side resized, centre cut."""
    return v2.Compose(
        [
            v2.ToImage(),  # (3, H, W) uint8
            v2.Resize(resolution_px, antialias=True),  # shorter side -> resolution_px, aspect kept
            v2.CenterCrop(resolution_px),  # (3, R, R)
            v2.ToDtype(torch.float32, scale=True),  # in [0, 1]
            v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),  # in [-1, 1]
        ]
    )


def _is_flipped(seed: int, draw: int, p: float) -> bool:
    """Whether draw number `draw` is flipped: the `flip` stream at that position, so no hidden RNG state."""
    return bool(torch.rand((), generator=torch_generator(seed, "flip", draw)) < p)


class RandomFlipView(Dataset):
    """Wraps a dataset; `view[(index, draw)]` is sample `index`, flipped left-right with probability p.

    `draw` counts samples drawn by the training sampler (it keeps growing across epochs), so the same image
    gets a fresh flip decision each time it is drawn, and the decision survives a resume.
    """

    def __init__(self, dataset: Dataset, seed: int, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"horizontal flip probability p={p} must be in [0, 1]")
        self.dataset = dataset
        self.seed = seed
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        assert isinstance(key, tuple) and len(key) == 2, f"expected an (index, draw) key, got {key!r}"
        index, draw = key
        image, label = self.dataset[index]  # (3, H, W)
        if self.p > 0.0 and _is_flipped(self.seed, draw, self.p):
            image = F.horizontal_flip(image)  # (3, H, W), columns reversed
        return image, label
