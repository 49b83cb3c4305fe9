"""Adaptive weight of the adversarial loss, balancing its gradient against the reconstruction gradient.

Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (CVPR 2021), Eq. 7:
lambda = ||grad_{G_L}[L_rec]|| / (||grad_{G_L}[L_GAN]|| + delta), delta = 1e-4, where G_L is the last layer of
the decoder. LDM (`ldm/modules/losses/contperceptual.py::calculate_adaptive_weight`) clamps it to [0, 1e4] and
uses the NLL (L1 + LPIPS, over exp(logvar)) as L_rec, with `last_layer = decoder.conv_out.weight`.
"""

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _grad_or_zeros(loss: Tensor, param: nn.Parameter) -> Tensor:
    """d loss / d param in fp32; zeros if the loss does not depend on `param` (a GAN term switched off)."""
    (grad,) = torch.autograd.grad(loss, param, retain_graph=True, allow_unused=True)
    return torch.zeros_like(param, dtype=torch.float32) if grad is None else grad.float()


def adaptive_weight(
    nll_loss: Tensor,
    g_loss: Tensor,
    last_layer: nn.Parameter,
    max_weight: float = 1e4,
    reduce_grads: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """lambda = ||dNLL/dW|| / (||dG/dW|| + 1e-4), clamped to [0, max_weight]; a detached fp32 scalar.

    `torch.autograd.grad` returns the gradients without writing `.grad` and without running the
    AccumulateGrad hooks, so DDP's reducer is not triggered (no extra all-reduce, no "marked ready twice"),
    and the graph is retained for the real backward that follows.

    `reduce_grads` (applied to the NLL gradient first, then to the GAN gradient) lets every process use the
    weight that one process with the global batch would compute: the training loop passes
    `lambda g: accelerator.reduce(g, "mean")`. taming/LDM compute it from the per-GPU gradients instead. It is
    a collective, so every rank must call this function on every step where any rank does.
    """
    with torch.autocast(device_type=last_layer.device.type, enabled=False):
        nll_grad = _grad_or_zeros(nll_loss, last_layer)  # same shape as W, e.g. (3, 128, 3, 3) for conv_out
        g_grad = _grad_or_zeros(g_loss, last_layer)
        if reduce_grads is not None:
            nll_grad, g_grad = reduce_grads(nll_grad).float(), reduce_grads(g_grad).float()
        weight = nll_grad.norm() / (g_grad.norm() + 1e-4)  # taming Eq. 7
        weight = torch.nan_to_num(weight, nan=0.0, posinf=max_weight)  # NaN gradient: GAN term off this step
        return weight.clamp(0.0, max_weight).detach()
