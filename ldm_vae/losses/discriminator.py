"""PatchGAN discriminator and its hinge losses, as used by VQGAN and the LDM first stage.

The discriminator is pix2pix's PatchGAN (Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks", CVPR 2017, Section 3.2.2) in the form of taming-transformers'
`taming/modules/discriminator/model.py::NLayerDiscriminator` (Esser et al., "Taming Transformers", CVPR 2021).
The losses are the hinge losses of Lim & Ye, "Geometric GAN" (2017), in LDM's
`ldm/modules/losses/contperceptual.py` form: L_D = 0.5 * [mean relu(1 - D(x)) + mean relu(1 + D(x_hat))] and
L_G = -mean D(x_hat).

Why GroupNorm is the default (taming uses BatchNorm):
- BatchNorm statistics come from the per-process batch, so under DDP the discriminator computes a different
  function on 8 GPUs x 4 images than on 1 GPU x 32 images, and the two runs cannot be compared.
- DDP broadcasts buffers (BN running stats) from rank 0 at the start of every forward. The usual step runs
  D twice (reals, then fakes) before one backward; the broadcast in the second forward overwrites running
  stats that autograd saved for the first, and backward fails with the in-place modification error (unless
  `broadcast_buffers=False`).
GroupNorm has no buffers and no batch dependence, so neither problem arises.

With `lecam_decay` set, the discriminator carries LeCAM's running logit averages (losses/lecam.py) as its
`lecam` submodule: they are its training state, so its checkpoint holds them and a resume continues exactly.
"""

import math
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ldm_vae.losses.lecam import LeCAM

# ----------------------------------------------------------------------------
# helpers


def _norm(kind: Literal["group", "batch"], channels: int) -> nn.Module:
    """The norm after each hidden conv; the group count divides `channels` (32 for powers of two >= 32)."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm={kind!r} is not supported; use 'group' or 'batch'")


def _init_weights(module: nn.Module) -> None:
    """taming's `weights_init` (DCGAN init): conv weights N(0, 0.02); norm weights N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)  # conv biases keep PyTorch's default, as in taming
    elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------
# losses


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss for D in fp32: 0.5 * [mean relu(1 - D(x)) + mean relu(1 + D(x_hat))] (LDM section 1.2)."""
    loss_real = F.relu(1.0 - logits_real.float()).mean()
    loss_fake = F.relu(1.0 + logits_fake.float()).mean()
    return 0.5 * (loss_real + loss_fake)


def generator_adversarial_loss(logits_fake: Tensor) -> Tensor:
    """Generator's adversarial term in fp32: -mean D(x_hat) (LDM's `g_loss`)."""
    return -logits_fake.float().mean()


# ----------------------------------------------------------------------------
# main class


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping patch (~70 px receptive field with 3 layers).

    With the defaults a (b, 3, 256, 256) input gives (b, 1, 30, 30) logits and the network has ~2.77M
    parameters, as taming's `NLayerDiscriminator`.
    """

    def __init__(
        self,
        in_channels: int = 3,  # image channels
        channels: int = 64,  # width of the first conv; later layers use up to 8x this
        num_layers: int = 3,  # stride-2 convs; 3 in LDM's KL configs, 2 in vq-f8/vq-f16
        norm: Literal["group", "batch"] = "group",  # see the module docstring for why not BatchNorm
        lecam_decay: float | None = None,  # keep LeCAM's logit averages with this EMA decay; None = no LeCAM
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        mult = 1
        for n in range(1, num_layers):  # stride-2 blocks; no conv bias since a norm follows
            c_in, mult = channels * mult, min(2**n, 8)
            layers += [
                nn.Conv2d(c_in, channels * mult, kernel_size=4, stride=2, padding=1, bias=False),
                _norm(norm, channels * mult),
                nn.LeakyReLU(0.2),
            ]
        c_in, mult = channels * mult, min(2**num_layers, 8)
        layers += [
            nn.Conv2d(c_in, channels * mult, kernel_size=4, stride=1, padding=1, bias=False),
            _norm(norm, channels * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels * mult, 1, kernel_size=4, stride=1, padding=1),  # logits map
        ]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)
        self.lecam = LeCAM(lecam_decay) if lecam_decay is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """Logits (b, 1, h', w') for images (b, c, h, w) in [-1, 1]; h' = h / 2^num_layers - 2."""
        return self.main(x)
