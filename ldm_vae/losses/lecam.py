"""LeCAM regularisation of the discriminator (Tseng et al., "Regularizing Generative Adversarial Networks
under Limited Data", CVPR 2021), as used for tokenizer GANs by MAGVIT-v2.

    R_LC = mean relu(D(x) - ema_fake)^2 + mean relu(ema_real - D(G(z)))^2

ema_real / ema_fake are moving averages of the discriminator's mean logits on real and generated images.
The paper's eq. 3 writes plain squares; the authors' released code (and MAGVIT-v2 reproductions) clip with
relu, so only a real logit above the fake average, or a fake logit below the real average, is pulled back:
D may not separate the two further than their running averages are apart. We follow the code.

The averages are training state: `LeCAM` keeps them as buffers, so a checkpoint holds them and a resumed
run continues exactly. In a multi-process run each update uses the mean over all processes' logits, so the
averages stay identical on every rank and equal what one process with the whole batch would compute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def lecam_regularizer(logits_real: Tensor, logits_fake: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """R_LC in fp32 for logits of any shape and the two scalar averages (module docstring)."""
    pull_real = F.relu(logits_real.float() - ema_fake).square().mean()
    pull_fake = F.relu(ema_real - logits_fake.float()).square().mean()
    return pull_real + pull_fake


class LeCAM(nn.Module):
    """The two logit averages and the regulariser; call it on every discriminator step."""

    def __init__(self, decay: float = 0.99):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))  # () fp32, mean D(x) averaged over steps
        self.register_buffer("ema_fake", torch.zeros(()))  # () fp32, mean D(G(z)) averaged over steps

    def extra_repr(self) -> str:
        return f"decay={self.decay}"

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """Update the averages with this batch (training mode only), then return R_LC against them."""
        if self.training:
            self._update_(logits_real.detach(), logits_fake.detach())
        return lecam_regularizer(logits_real, logits_fake, self.ema_real, self.ema_fake)

    @torch.no_grad()
    def _update_(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        means = torch.stack([logits_real.float().mean(), logits_fake.float().mean()])  # (2,)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(means)
            means /= dist.get_world_size()  # equal per-rank batches: the mean over the global batch
        self.ema_real.lerp_(means[0], 1 - self.decay)  # ema = decay * ema + (1 - decay) * mean
        self.ema_fake.lerp_(means[1], 1 - self.decay)
