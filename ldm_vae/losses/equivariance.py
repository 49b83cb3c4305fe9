"""EQ-VAE's equivariance loss (Kouzelis et al. 2025, "EQ-VAE: Equivariance Regularized Latent Space for
Improved Generative Image Modeling"): decode a transformed latent and compare it with the same
transform of the image, D(tau(z)) ~ tau(x).

An autoencoder whose latents commute with downscaling and 90-degree rotations has a latent space with
less high-frequency structure that does not belong to the image, which the paper finds easier to
diffuse. The transforms are the paper's kinds: a downscale by a factor in SCALES (the latent grid shrinks to
round(s * h) and the image to f times that), a rotation by k quarter turns, or both. The rotations are
exact; the downscale uses the same antialiased bilinear resampling on the latent and on the image, so an
autoencoder that is the identity has a loss of exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCALES = (0.5, 0.75)  # downscale factors; 1.0 (no downscale) is drawn as often as each of them


@dataclass(frozen=True)
class Transform:
    """tau: downscale by `scale` (1 = none), then rotate by `quarter_turns` x 90 degrees counter-clockwise."""

    scale: float
    quarter_turns: int

    def __call__(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """tau(x) for x (b, c, h, h), resized to (size, size)."""
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return torch.rot90(x, self.quarter_turns, dims=(-2, -1))


def draw_transform(generator: torch.Generator) -> Transform:
    """A transform other than the identity: scale uniform over (1, *SCALES), quarter turns over 0..3."""
    while True:
        scale = (1.0, *SCALES)[int(torch.randint(len(SCALES) + 1, (), generator=generator))]
        turns = int(torch.randint(4, (), generator=generator))
        if scale != 1.0 or turns:
            return Transform(scale, turns)


def transformed_decode(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    images: torch.Tensor,
    transform: Transform,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(tau(z)), tau(x)), both (b, 3, f * m, f * m), for latents (b, c, h, h) and images (b, 3, f*h, f*h):
    the transformed latent is m = round(scale * h) wide and the image is resized to f times that."""
    side, factor = latents.shape[-1], images.shape[-1] // latents.shape[-1]
    assert latents.shape[-2] == side and images.shape[-2:] == (factor * side,) * 2, (
        f"latents {tuple(latents.shape)} and images {tuple(images.shape)}: expected square, f * h"
    )
    small = max(1, round(transform.scale * side))
    return decode(transform(latents, small)), transform(images, factor * small)


def equivariance_loss(
    decoded: torch.Tensor, target: torch.Tensor, reconstruction: str = "l2"
) -> torch.Tensor:
    """Mean per-pixel |D(tau(z)) - tau(x)| (l1) or its square (l2) of a `transformed_decode` pair, fp32."""
    error = decoded.float() - target.float()
    return (error.abs() if reconstruction == "l1" else error.square()).mean()
