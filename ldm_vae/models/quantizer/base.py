"""What every quantizer kind shares: diffusers' call signature, usage bookkeeping, the codebook to export.

Export contract. diffusers' `VQModel` quantises with `argmin(cdist(z, quantize.embedding.weight))` on the raw
`quant_conv` output and decodes `post_quant_conv(embedding[idx])`. A quantizer here therefore
- takes `quant_conv`'s output as it is: no projection of its own (`quant_conv` maps the encoder's channels
  to the code dimension, `post_quant_conv` maps back), so the exported model computes the very same tokens,
  bit for bit, instead of a product of two linear maps folded into one (whose rounding differs);
- picks, in its training forward, the row of `codebook()` nearest (Euclidean) to each token;
- returns that row as the forward value, whatever its gradient is.

Distributed: in a training-mode forward with grad enabled, the code histogram is summed over all ranks
(one collective, on every rank alike), so usage counters stay identical across replicas.

Shape letters: b batch, d (= dim) code dimension = channels of `quant_conv`'s output, h w latent height and
width, n = b*h*w tokens, k number of codes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn

from ldm_vae.metrics.codebook import perplexity

# ---------------------------------------------------------------------------------------------------------
# distributed helpers: no-ops in a single process


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(x: Tensor) -> Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


# ---------------------------------------------------------------------------------------------------------
# base class


class Quantizer(nn.Module):
    """Base of every kind: `forward` with the layout of diffusers' `VectorQuantizer.forward`, for tokens of
    `dim` channels and a vocabulary of `num_codes`.

    A subclass implements `_quantize` (tokens -> codes, indices, loss), `_code_vectors` (indices -> code
    rows) and `codebook` (every code, for export). Usage is tracked here for all kinds: `steps_since_used`
    counts training forwards since each code was last chosen, so `dead_codes()` means the same everywhere.
    """

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        # Training state, persistent so a resume continues exactly.
        self.register_buffer("steps_since_used", torch.zeros(num_codes, dtype=torch.long))  # (k,)
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))  # training forwards so far

    # -- what a subclass provides -------------------------------------------------------------------------

    def _quantize(self, tokens: Tensor, is_updating: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """tokens (n, d) fp32 -> (quantized (n, d): forward value = the chosen code rows, with the kind's
        gradient; indices (n,) int64; loss (); counts (k,), summed over ranks when `is_updating`)."""
        raise NotImplementedError

    def _code_vectors(self, indices: Tensor) -> Tensor:
        """indices (n,) int64 -> code rows (n, d) fp32, the rows `codebook()` holds at those indices."""
        raise NotImplementedError

    def codebook(self) -> Tensor:
        """Every code (k, d) fp32, in index order: what export stores as `quantize.embedding.weight`."""
        raise NotImplementedError

    def health(self) -> dict[str, float]:
        """Scalars to log after a training step; subclasses add their own."""
        return {"dead_codes": self.dead_codes()}

    # -- public -------------------------------------------------------------------------------------------

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """z (b, d, h, w) -> (z_q (b, d, h, w), loss, (perplexity, usage_counts (k,), indices (b, h, w))).

        The layout of diffusers' `VectorQuantizer.forward`, so `VQModel.decode` and `VQModel.forward` work.
        Unlike diffusers, `indices` are (b, h, w) int64. `usage_counts` and `perplexity` cover all ranks'
        tokens in a training forward, else this rank's. The loss stays fp32; z_q comes back in z's dtype.
        """
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects latents (b, {self.dim}, h, w), got {tuple(z.shape)}"
            )
        b, _, h, w = z.shape
        is_updating = self.training and torch.is_grad_enabled()
        with torch.autocast(z.device.type, enabled=False):  # lookup, losses and statistics all in fp32
            tokens = rearrange(z.float(), "b d h w -> (b h w) d")  # (n, d), diffusers' layout and order
            quantized, idx, loss, counts = self._quantize(tokens, is_updating)
            z_q = rearrange(quantized, "(b h w) d -> b d h w", b=b, h=h, w=w)
        return z_q.to(z.dtype), loss, (perplexity(counts), counts, idx.view(b, h, w))

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Token ids (b, h, w) -> codes (b, d, h, w): what `forward` returns for inputs mapped to them."""
        b, h, w = indices.shape
        code = self._code_vectors(indices.reshape(-1))  # (n, d) fp32
        return rearrange(code, "(b h w) d -> b d h w", b=b, h=h, w=w)

    def get_codebook_entry(self, indices: Tensor, shape: tuple[int, ...]) -> Tensor:
        """diffusers' name, used by `VQModel.decode(ids, force_not_quantize=True, shape=(b, h, w, c))`."""
        return self.indices_to_codes(indices.reshape(shape[:3]))

    def dead_codes(self) -> int:
        """Codes not chosen in the latest training forward, or longer (see `steps_since_used`)."""
        return int((self.steps_since_used >= 1).sum())

    # -- usage bookkeeping --------------------------------------------------------------------------------

    def _count(self, idx: Tensor, is_updating: bool) -> Tensor:
        """Histogram (k,) of this forward's codes; in training, over all ranks, and recorded as usage."""
        counts = torch.bincount(idx, minlength=self.num_codes).float()  # (k,) this rank
        if is_updating:
            counts = all_reduce_sum_(counts)  # (k,) all ranks
            self._mark_used_(counts)
            self.step.add_(1)
        return counts

    @torch.no_grad()
    def _mark_used_(self, counts: Tensor) -> None:
        """Advance every code's unused counter; reset those chosen in this forward (all ranks' counts)."""
        self.steps_since_used.add_(1).masked_fill_(counts > 0, 0)
