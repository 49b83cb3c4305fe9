"""Codebook health of a tokenizer, the same for every quantizer kind (learned VQ, FSQ, LFQ).

Both numbers need only code indices and the vocabulary size, so they also score any exported diffusers
`VQModel`. `usage` is the fraction of the k codes used at least once; `perplexity` is exp(entropy) of the
code histogram: 1 when one code takes every token, k when all are equally frequent. Perplexity of one batch
depends on its size (a batch of n tokens cannot exceed n), so compare numbers over a whole held-out pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code histogram counts (k,): 1 if one code takes everything, k if uniform."""
    p = counts.float() / counts.sum().clamp(min=1)
    return torch.special.entr(p).sum().exp()


def codebook_usage(indices: Tensor, num_codes: int) -> dict[str, float]:
    """{"usage", "perplexity"} of code indices (any shape, int) over a vocabulary of `num_codes`."""
    assert indices.numel() == 0 or int(indices.max()) < num_codes, f"indices reach {int(indices.max())}"
    counts = torch.bincount(indices.flatten().long(), minlength=num_codes)  # (k,)
    return {"usage": (counts > 0).float().mean().item(), "perplexity": perplexity(counts).item()}
