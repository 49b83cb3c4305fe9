"""Codebook-free quantizers whose implicit codebook is a product grid: FSQ (kind: fsq) and LFQ (kind: lfq).

FSQ (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024) rounds each of d channels
to one of L_i levels; the codebook is the product grid, prod(L_i) codes (levels [8, 5, 5, 5] = 1000).
LFQ (Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to Visual Generation" (MAGVIT-v2), ICLR
2024) takes the sign of each of d channels: the grid {-1, +1}^d, 2^d codes, i.e. FSQ with every L_i = 2,
trained with an entropy penalty instead of FSQ's bound.

Export exactness decides the design. A diffusers `VQModel` picks the row of `quantize.embedding.weight`
nearest to u = `quant_conv(h)`, a LINEAR map of the encoder output. On a product grid the Euclidean nearest
point is found per channel, and per channel the nearest grid point of a value u is round-after-clamp:
with the grid g_k = -1 + 2k/(L-1), k = 0..L-1 (spanning [-1, 1]; even L has no 0, which is the paper's
half-step offset), k = round((clamp(u, -1, 1) + 1) (L - 1) / 2). So the code decision here is made on u
itself, and the enumerated grid exported as the codebook gives the same codes (up to float rounding for a
u within ~1e-6 of a cell boundary). The paper's tanh bound, f(u) = floor(L/2) tanh(u), cannot be exported:
it is nonlinear, so no quant_conv computes it. We use the hard clamp instead.

Gradients: straight-through over clamp and round, q = u + sg(code - u): the decoder's gradient reaches u
unchanged, inside or outside the box (clamp's own gradient, zero outside, would strand a channel pushed out
of [-1, 1]). What the tanh did, keeping u in range, an explicit penalty does: commitment_weight *
mean((u - sg(clamp(u)))^2), zero inside the box, where FSQ has no auxiliary loss, and pulling u back
otherwise. LFQ uses the same straight-through sign and MAGVIT-v2's losses (see LookupFreeQuantizer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ldm_vae.config import check_enumerable
from ldm_vae.models.quantizer.base import Quantizer


class FiniteScalarQuantizer(Quantizer):
    """FSQ with a hard [-1, 1] box on the tokens (quant_conv's output): exportable (module docstring).

    Index of a code: mixed radix over the channels, the last channel varying fastest (as
    `torch.cartesian_prod` enumerates the grid), index = sum_i k_i prod_{j > i} L_j.
    """

    def __init__(self, levels: list[int], *, commitment_weight: float = 0.25):
        levels = [int(level) for level in levels]  # each >= 2 (declared on QuantizerConfig.levels)
        num_codes = math.prod(levels)
        check_enumerable(num_codes, len(levels), f"levels={levels}")
        super().__init__(num_codes, len(levels))  # one token channel per level count
        self.levels = levels
        self.commitment_weight = commitment_weight
        radix = [math.prod(levels[i + 1 :]) for i in range(len(levels))]
        # Constants, rebuilt from `levels` on load (not checkpointed): (d,) each.
        self.register_buffer(
            "half_steps", (torch.tensor(levels, dtype=torch.float32) - 1) / 2, persistent=False
        )
        self.register_buffer("radix", torch.tensor(radix, dtype=torch.long), persistent=False)
        self.register_buffer("level_counts", torch.tensor(levels, dtype=torch.long), persistent=False)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, num_codes={self.num_codes}"

    # -- Quantizer ----------------------------------------------------------------------------------------

    def _quantize(self, tokens: Tensor, is_updating: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            digits = torch.round((tokens.clamp(-1, 1) + 1) * self.half_steps)  # (n, d) in {0, .., L_i - 1}
            code = digits / self.half_steps - 1  # (n, d) the nearest grid point of each token
            idx = (digits.long() * self.radix).sum(dim=-1)  # (n,)
        loss = self._loss(tokens, code)
        counts = self._count(idx, is_updating)
        return tokens + (code - tokens).detach(), idx, loss, counts  # straight-through

    def _code_vectors(self, indices: Tensor) -> Tensor:
        digits = (indices[:, None] // self.radix) % self.level_counts  # (n, d)
        return digits.float() / self.half_steps - 1

    def codebook(self) -> Tensor:
        return self._code_vectors(torch.arange(self.num_codes, device=self.radix.device))  # (k, d)

    # -- loss ---------------------------------------------------------------------------------------------

    def _loss(self, tokens: Tensor, code: Tensor) -> Tensor:
        """The bound penalty: beta * mean squared distance of u outside [-1, 1] (0 inside)."""
        return self.commitment_weight * F.mse_loss(tokens, tokens.detach().clamp(-1, 1))


class LookupFreeQuantizer(FiniteScalarQuantizer):
    """LFQ: code = sign of each of `bits` channels, 2^bits codes, trained with MAGVIT-v2's entropy penalty.

    Loss = commitment_weight * mean (u - sg(code))^2
         + entropy_weight * (mean per-token entropy - codebook_entropy_weight * entropy of the mean),
    both entropies of the soft assignment p(c | u) = softmax_c(-|u - c|^2 / temperature) over all 2^bits
    codes. Driving each token's entropy down makes it commit to one code; driving the entropy of the
    batch-averaged assignment up spreads the batch over the codebook. On {-1, +1}^d the softmax factorises
    per channel, p(c_i = +1 | u_i) = sigmoid(4 u_i / temperature), so the per-token entropy is a sum of d
    binary entropies; the mean assignment does not factorise and is computed over the full codebook, which
    costs (tokens, 2^bits) floats. The entropy terms enter only when grad is enabled (they are a training
    signal) and cover this process's tokens, as in MAGVIT-v2.
    """

    def __init__(
        self,
        bits: int,
        *,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        codebook_entropy_weight: float = 1.0,
        temperature: float = 0.01,
    ):
        check_enumerable(2**bits, bits, f"bits={bits}")
        super().__init__([2] * bits, commitment_weight=commitment_weight)
        self.entropy_weight = entropy_weight
        self.codebook_entropy_weight = codebook_entropy_weight
        self.temperature = temperature
        # Entropies of the latest forward with grad, for logging (not state).
        self.last_entropies: dict[str, Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"bits={self.dim}, num_codes={self.num_codes}, "
            f"entropy_weight={self.entropy_weight}, temperature={self.temperature}"
        )

    def health(self) -> dict[str, float]:
        return {**super().health(), **{key: value.item() for key, value in self.last_entropies.items()}}

    def _loss(self, tokens: Tensor, code: Tensor) -> Tensor:
        loss = self.commitment_weight * F.mse_loss(tokens, code)
        if self.entropy_weight == 0 or not torch.is_grad_enabled():
            return loss
        sample_entropy, codebook_entropy = self.entropies(tokens)
        self.last_entropies = {
            "sample_entropy": sample_entropy.detach(),
            "codebook_entropy": codebook_entropy.detach(),
        }
        return loss + self.entropy_weight * (sample_entropy - self.codebook_entropy_weight * codebook_entropy)

    def entropies(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(mean per-token entropy, entropy of the mean assignment), in nats, of tokens (n, d)."""
        logits = 4 * tokens / self.temperature  # (n, d) log-odds of c_i = +1
        log_plus, log_minus = F.logsigmoid(logits), F.logsigmoid(-logits)  # (n, d) each
        sample_entropy = -(log_plus.exp() * log_plus + log_minus.exp() * log_minus).sum(dim=-1).mean()
        plus = (self.codebook() > 0).float()  # (k, d) 1 where code c has c_i = +1
        # log p(c | u) = sum_i log_minus_i + sum_{i: c_i = +1} logits_i, as log_plus - log_minus = logits
        log_assign = logits @ plus.T + log_minus.sum(dim=-1, keepdim=True)  # (n, k)
        log_mean = torch.logsumexp(log_assign, dim=0) - math.log(len(tokens))  # (k,) log mean_n p(c | u_n)
        codebook_entropy = -(log_mean.exp() * log_mean).sum()
        return sample_entropy, codebook_entropy
