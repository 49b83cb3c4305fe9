"""One seed scheme for every random stream: a draw is keyed by (seed, stream name, position).

Each of the three is written as exactly two 32-bit words into `numpy.random.SeedSequence`, whose hash
mixes them into the generator's state. A fixed width makes the key-to-entropy map one-to-one, so two
different triples never share a draw (unlike linear formulas such as `seed * 1_000_003 + position`, where
seed 1 at position 0 equals seed 0 at position 1_000_003). Randomness keyed by position, not by a
running generator, is what makes N processes equal one process and a resumed run equal an uninterrupted
one: nothing has to be saved or replayed.

Stream names in use (one per independent kind of draw):
  data_order       the permutation of epoch e of the training stream (position = epoch)
  flip             the horizontal flip of the image at stream position p
  ae_noise         the autoencoder's posterior noise at stream position p
  latent_read      a latent store's posterior draw and flip at stream position p
  diffusion        the diffusion noise, timestep and label/caption drop at stream position p
  quantizer        codebook init (position 0) and dead-code restarts (position = step)
  caption          which template writes the caption of builtin:shapes sample i (position = i)
  pack_order       the shuffle of an image folder's samples across the shards `ldm-vae pack` writes
  export_statistics  the posterior draws that measure an exported autoencoder's scaling_factor
  equivariance     the EQ-VAE scale/rotation of autoencoder training step p (position = step)
  judge_images     the named-colour shapes the factor judge trains on (position 0) and is scored on (1)
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_WORD = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def _words(value: int) -> list[int]:
    """A 64-bit value as two 32-bit words; negative seeds wrap (two's complement), still distinct."""
    value &= _U64
    return [value & _WORD, value >> 32]


def stream_id(stream: str) -> int:
    """A 64-bit id for a stream name, stable across Python processes (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little")


def derive_seed(seed: int, stream: str, position: int = 0) -> int:
    """A 63-bit seed for the draw at `position` of `stream`, for a run seeded with `seed`."""
    if position < 0:
        raise ValueError(f"position={position}: stream positions are >= 0")
    entropy = np.array([*_words(seed), *_words(stream_id(stream)), *_words(position)], dtype=np.uint32)
    low, high = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return ((int(high) << 32) | int(low)) & ((1 << 63) - 1)


def torch_generator(seed: int, stream: str, position: int = 0) -> torch.Generator:
    """A fresh CPU generator for one keyed draw: the same on every process, device and resume."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, position))


def numpy_generator(seed: int, stream: str, position: int = 0) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, position))


def position_normals(seed: int, stream: str, positions: range, shape: tuple[int, ...]) -> torch.Tensor:
    """N(0, I) noise of `shape` for each stream position, stacked: (len(positions), *shape).

    Drawn per position (not per batch), so N processes, gradient accumulation and a bigger batch all see
    the same noise for the same sample, and a resumed run draws what the uninterrupted one did.
    """
    return torch.stack([torch.randn(shape, generator=torch_generator(seed, stream, p)) for p in positions])
