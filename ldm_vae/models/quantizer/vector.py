"""Learned-codebook vector quantizer (kind: vq): EMA codebook, k-means init, restarts, rotation trick.

Papers: VQ-VAE (van den Oord et al. 2017, eq. 3; EMA codebook updates from Appendix A.1); k-means init on the
first batch (SoundStream, Zeghidour et al. 2021); restarting dead codes from encoder outputs (Jukebox,
Dhariwal et al. 2020); factorised, l2-normalised low-dimensional codes (ViT-VQGAN, Yu et al. 2022; LlamaGen,
Sun et al. 2024); the rotation trick (Fifty et al., "Restructuring Vector Quantization with the Rotation
Trick", ICLR 2025).

Export (see base.py): this module does diffusers' exact lookup, `argmin(cdist(tokens, codes))`, so
- the codebook is `embedding.weight` (k, d), exported as `quantize.embedding.weight`;
- with `use_cosine`, the stored rows are unit-norm (after init, every EMA update and every restart), so
  `argmin ||z - e|| == argmax z.e == argmax cos(z, e)`: the cosine lookup survives export unchanged;
- every buffer other than `embedding.weight` is training state and is not exported.

Distributed (taming's EmbeddingEMA and ESPnet kept per-rank statistics, so replicas drifted). Every
collective runs only in training-mode forwards with grad enabled, on every rank alike: k-means and restarts
see the tokens of all ranks (`all_gather`, counts may differ per rank) and the EMA statistics are
all-reduced before the update, so all ranks apply the same update and keep identical codebooks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ldm_vae.errors import ConfigError
from ldm_vae.models.quantizer.base import Quantizer, all_reduce_sum_, is_distributed
from ldm_vae.seeds import torch_generator

_CHUNK_TOKENS = 4096  # k-means distance rows per chunk: (4096, k) fp32 is 256 MB at k = 16384

# ---------------------------------------------------------------------------------------------------------
# helpers


def _broadcast_(x: Tensor) -> Tensor:
    """Rank 0's value everywhere, against bit-level differences between devices computing the same thing."""
    if is_distributed():
        dist.broadcast(x, src=0)
    return x


def _all_gather_rows(x: Tensor) -> Tensor:
    """(n_rank, d) on each rank -> (sum of n_rank, d) in rank order on every rank; n_rank may differ."""
    if not is_distributed():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = x.new_zeros(max(counts), x.shape[1])  # all_gather needs equal shapes
    padded[: x.shape[0]] = x
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts, strict=True)])


def _sample_rows(x: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """`num` rows of x (n, d): without replacement when n >= num, else with replacement."""
    n = x.shape[0]
    if n >= num:
        rows = torch.randperm(n, generator=generator)[:num]
    else:
        rows = torch.randint(0, n, (num,), generator=generator)
    return x[rows.to(x.device)]


def _nearest(x: Tensor, codes: Tensor) -> Tensor:
    """Index of the nearest code for each row of x (n, d) -> (n,) int64, in chunks to bound memory."""
    return torch.cat([torch.cdist(chunk, codes).argmin(dim=1) for chunk in x.split(_CHUNK_TOKENS)])


def _kmeans(x: Tensor, num_codes: int, iters: int, use_cosine: bool, generator: torch.Generator):
    """Lloyd's k-means on x (n, d) -> (codes (k, d), counts (k,)); spherical (unit means) if use_cosine.

    Starts from `num_codes` random rows. A cluster left empty keeps its previous centre.
    """
    codes = _sample_rows(x, num_codes, generator)  # (k, d)
    counts = torch.zeros(num_codes, device=x.device)
    for _ in range(iters):
        idx = _nearest(x, codes)  # (n,)
        counts = torch.bincount(idx, minlength=num_codes).float()  # (k,)
        sums = torch.zeros_like(codes).index_add_(0, idx, x)  # (k, d)
        means = sums / counts.clamp(min=1)[:, None]
        if use_cosine:
            means = F.normalize(means, dim=-1)
        codes = torch.where(counts[:, None] > 0, means, codes)
    return codes, counts


def rotate_to_codes(vectors: Tensor, codes: Tensor, eps: float = 1e-6) -> Tensor:
    """The rotation trick: forward value `codes` (n, d); gradient to `vectors` (n, d) is lambda R^T g.

    R is the rotation taking e = vectors[i] to the direction of q = codes[i] within the plane of the two,
    R = I - 2 r r^T + 2 q^ e^T with e^ = e/|e|, q^ = q/|q|, r = (e^ + q^)/|e^ + q^|, and lambda = |q|/|e|,
    so lambda R e = q. Both are constants (no gradient), which is the trick: the output is
    sg(lambda R) e, so the upstream gradient reaches e rotated and rescaled instead of copied (Fifty et
    al. 2025, eq. 4-5). R v is applied as two rank-one updates, without forming the (d, d) matrix.
    `codes` must carry no gradient; the forward value is `codes` bit for bit, so export stays exact.
    """
    with torch.no_grad():
        e_norm = vectors.norm(dim=-1, keepdim=True).clamp(min=eps)  # (n, 1)
        q_norm = codes.norm(dim=-1, keepdim=True)  # (n, 1)
        e_hat, q_hat = vectors / e_norm, codes / q_norm.clamp(min=eps)
        r = F.normalize(e_hat + q_hat, dim=-1, eps=eps)  # (n, d)
        scale = q_norm / e_norm  # (n, 1)
    along_r = (r * vectors).sum(dim=-1, keepdim=True)  # (n, 1) r.v
    along_e = (e_hat * vectors).sum(dim=-1, keepdim=True)  # (n, 1) e^.v
    rotated = scale * (vectors - 2 * r * along_r + 2 * q_hat * along_e)  # (n, d) lambda R v, = codes
    return codes + (rotated - rotated.detach())


# ---------------------------------------------------------------------------------------------------------
# main class


class VectorQuantizer(Quantizer):
    """VQ layer with diffusers' `VectorQuantizer` call signature, an EMA (or gradient) codebook and restarts.

    update="ema": the codebook is a moving average of the tokens assigned to it (VQ-VAE Appendix A.1), with
    no optimizer; the loss is only the commitment term. update="gradient": the codebook is a trained
    parameter and the loss adds the codebook term (VQ-VAE eq. 3, with beta on the ENCODER term, unlike
    diffusers' legacy order). With use_cosine in gradient mode the lookup (and `codebook()`) uses
    normalised rows; `normalize_codebook_()` puts the stored rows back on the sphere.

    gradient="straight_through" copies the decoder's gradient onto the token (VQ-VAE); "rotation" passes
    it through the rotation and rescaling that maps the token onto its code (`rotate_to_codes`), so tokens
    on either side of a code get different gradients. The forward value is the code either way.

    Statistics change on every training-mode forward with grad enabled, not per optimizer step: with
    gradient accumulation each micro-batch updates them; run extra passes (e.g. for the discriminator)
    under `torch.no_grad()` or in eval mode.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        commitment_weight: float = 0.25,
        update: Literal["ema", "gradient"] = "ema",
        gradient: Literal["straight_through", "rotation"] = "straight_through",
        decay: float = 0.99,
        eps: float = 1e-5,
        use_cosine: bool = False,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_window_steps: int = 0,
        seed: int = 0,
    ):
        # The config declares the ranges of the other arguments (ldm_vae/config.py QuantizerConfig).
        if eps <= 0:
            raise ConfigError(f"eps={eps} must be > 0 (Laplace smoothing, 1e-5 is usual)")
        if kmeans_iters < 1:
            raise ConfigError(f"kmeans_iters={kmeans_iters} must be >= 1")
        super().__init__(num_codes, dim)
        self.commitment_weight = commitment_weight
        self.update, self.gradient = update, gradient
        self.decay, self.eps = decay, eps
        self.use_cosine = use_cosine
        self.kmeans_init, self.kmeans_iters = kmeans_init, kmeans_iters
        self.dead_code_window_steps = dead_code_window_steps
        self.seed = seed
        self.last_restarts = 0  # codes restarted by the latest training forward, for logging (not state)

        self.embedding = nn.Embedding(num_codes, dim)
        with torch.no_grad():  # taming's uniform(-1/k, 1/k), from `seed` so every rank starts identical
            codes = torch.empty(num_codes, dim).uniform_(
                -1 / num_codes, 1 / num_codes, generator=torch_generator(seed, "quantizer", 0)
            )
            self.embedding.weight.copy_(F.normalize(codes, dim=-1) if use_cosine else codes)
        self.embedding.weight.requires_grad_(update == "gradient")

        # Training state, persistent so a resume continues exactly. Every code starts as if one vector had
        # been assigned to it, so an unused code keeps its value under EMA instead of collapsing to 0.
        self.register_buffer("cluster_size", torch.ones(num_codes))  # (k,) EMA of assignment counts
        self.register_buffer("embed_sum", self.embedding.weight.detach().clone())  # (k, d) EMA of sums
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))  # 1 once (k-means) init ran

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, update={self.update!r}, "
            f"gradient={self.gradient!r}, use_cosine={self.use_cosine}, "
            f"dead_code_window_steps={self.dead_code_window_steps}"
        )

    # -- Quantizer ----------------------------------------------------------------------------------------

    def _quantize(self, tokens: Tensor, is_updating: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        unit = F.normalize(tokens, dim=-1) if self.use_cosine else tokens  # (n, d) what gets quantised
        if is_updating and not bool(self.initialized):
            self._initialize_(unit.detach())
        codes = self._codes()  # (k, d)
        with torch.no_grad():  # diffusers' exact lookup; unit-norm codes make it the cosine argmax
            idx = torch.cdist(tokens, codes).argmin(dim=1)  # (n,) int64 in [0, k)
        code = codes[idx]  # (n, d)
        loss = self.commitment_weight * F.mse_loss(unit, code.detach())  # encoder term, beta (eq. 3)
        if self.update == "gradient":
            loss = loss + F.mse_loss(unit.detach(), code)  # codebook term, weight 1 (eq. 3)
        counts = torch.bincount(idx, minlength=self.num_codes).float()  # (k,) this rank
        if is_updating:
            counts = self._update_(unit.detach(), idx, counts)  # (k,) all ranks
        if self.gradient == "rotation":
            quantized = rotate_to_codes(unit, code.detach())
        else:
            quantized = unit + (code - unit).detach()  # straight-through: forward = code, backward = identity
        return quantized, idx, loss, counts

    def _code_vectors(self, indices: Tensor) -> Tensor:
        return self._codes()[indices]

    def codebook(self) -> Tensor:
        """The rows the lookup uses, bit for bit: `embedding.weight`, renormalised in gradient mode with
        use_cosine (the optimizer moves rows off the sphere between `normalize_codebook_` calls)."""
        return self._codes().detach()

    def health(self) -> dict[str, float]:
        return {**super().health(), "restarted_codes": self.last_restarts}

    # -- public -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def normalize_codebook_(self) -> None:
        """Gradient mode with use_cosine: put the rows back on the unit sphere after an optimizer step."""
        if self.use_cosine:
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def dead_codes(self) -> int:
        """Codes unused for the last max(window, 1) training forwards (window 0: unused in the last one).

        With restarts on, codes are restarted as soon as they reach the window, so after a forward this is 0
        and `last_restarts` is the number to log.
        """
        return int((self.steps_since_used >= max(self.dead_code_window_steps, 1)).sum())

    # -- training-state updates ---------------------------------------------------------------------------

    def _codes(self) -> Tensor:
        """(k, d) fp32 codebook for the lookup; renormalised in gradient mode, as the optimizer moves it."""
        weight = self.embedding.weight.float()
        if self.update == "gradient":
            # A copy, so an in-place restart later in this forward cannot invalidate what autograd saved.
            weight = weight.clone()
            return F.normalize(weight, dim=-1) if self.use_cosine else weight
        return weight

    @torch.no_grad()
    def _initialize_(self, unit: Tensor) -> None:
        """k-means on the first training batch of all ranks (SoundStream), identical on every rank."""
        if self.kmeans_init:
            codes, counts = _kmeans(
                _all_gather_rows(unit),
                self.num_codes,
                self.kmeans_iters,
                self.use_cosine,
                torch_generator(self.seed, "quantizer", 0),
            )
            _broadcast_(codes)
            _broadcast_(counts)
            counts = counts.clamp(min=1)  # an empty cluster starts like an untouched code, see __init__
            self.embedding.weight.copy_(codes)
            self.cluster_size.copy_(counts)
            self.embed_sum.copy_(codes * counts[:, None])  # so that embed_sum / cluster_size == codes
        self.initialized.fill_(1)

    @torch.no_grad()
    def _update_(self, unit: Tensor, idx: Tensor, counts: Tensor) -> Tensor:
        """EMA codebook update (VQ-VAE App. A.1), usage bookkeeping, restarts; returns all ranks' counts."""
        sums = unit.new_zeros(self.num_codes, self.dim).index_add_(0, idx, unit)  # (k, d) one-hot^T @ x
        stats = all_reduce_sum_(torch.cat([counts[:, None], sums], dim=1))  # (k, 1 + d): one collective
        counts_all, sums_all = stats[:, 0], stats[:, 1:]
        self.cluster_size.mul_(self.decay).add_(counts_all, alpha=1 - self.decay)  # eq. (6)
        if self.update == "ema":
            self.embed_sum.mul_(self.decay).add_(sums_all, alpha=1 - self.decay)  # eq. (7)
            self.embedding.weight.copy_(self._ema_codes())  # eq. (8)
        self._mark_used_(counts_all)  # same on all ranks: global counts
        self.last_restarts = 0
        if self.dead_code_window_steps > 0:
            self._restart_dead_codes_(unit)
        self.step.add_(1)
        return counts_all

    def _ema_codes(self) -> Tensor:
        """embed_sum / Laplace-smoothed cluster_size (k, d); unit rows if use_cosine."""
        k, n = self.num_codes, self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + k * self.eps) * n  # (k,) Laplace smoothing
        codes = self.embed_sum / smoothed[:, None]  # (k, d)
        if not self.use_cosine:
            return codes
        norms = codes.norm(dim=-1, keepdim=True)  # (k, 1)
        # A code unused for thousands of steps decays towards 0 (fp32 underflow): keep its direction.
        return torch.where(norms > 1e-12, codes / norms.clamp(min=1e-12), self.embedding.weight.float())

    def _restart_dead_codes_(self, unit: Tensor) -> None:
        """Re-seed codes unused for `dead_code_window_steps` from current tokens (Jukebox); reset their stats.

        Resetting cluster_size/embed_sum matters: ESPnet restarted the rows only, and the next EMA update
        overwrote them with the old statistics. Rows are drawn from the tokens of all ranks with a (seed,
        step) generator, so every rank picks the same ones and a resumed run picks what it would have.
        """
        dead = self.steps_since_used >= self.dead_code_window_steps  # (k,) identical on every rank
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        new = _sample_rows(
            _all_gather_rows(unit), num_dead, torch_generator(self.seed, "quantizer", int(self.step) + 1)
        )
        self.embedding.weight[dead] = new.to(self.embedding.weight.dtype)
        self.cluster_size[dead] = 1.0
        self.embed_sum[dead] = new
        self.steps_since_used[dead] = 0
        self.last_restarts = num_dead
