"""Weight-free sharpness of a reconstruction relative to its original: the Laplacian energy ratio.

Autoencoders trained on pixel losses blur (LDM, Rombach et al., CVPR 2022, Section 3.1, is why the perceptual
and adversarial terms exist); PSNR rewards that blur. This ratio shows it directly, with no network:

    sharpness(x_rec, x) = (E[(L * x_rec)^2] + eps) / (E[(L * x)^2] + eps)

where L is the 3x3 discrete Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]] applied to each RGB channel with no
padding (the border is dropped, so edges of the frame add nothing), and E is the mean over channels and
positions. The Laplacian responds to the highest spatial frequencies, so its energy is the image's fine
detail (the "variance of the Laplacian" focus measure, Pech-Pacheco et al., ICPR 2000). 1.0 means as much
fine detail as the original; below 1 the reconstruction is blurrier; above 1 it has more high-frequency
energy than the original (ringing, noise, GAN texture). eps keeps two flat images at 1.0.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
EPS = 1e-8  # in units of the squared Laplacian of [-1, 1] images; tiny next to any visible edge


def laplacian_energy(x: Tensor) -> Tensor:
    """Mean squared 3x3 Laplacian (b,) of images x (b, c, h, w), each channel filtered on its own, in fp32."""
    b, c, h, w = x.shape
    kernel = torch.tensor(LAPLACIAN, device=x.device).expand(c, 1, 3, 3)  # depthwise: (c, 1, 3, 3)
    response = F.conv2d(x.float(), kernel, groups=c)  # (b, c, h-2, w-2): valid positions only
    return response.square().mean(dim=(1, 2, 3))


def sharpness(reconstruction: Tensor, original: Tensor) -> Tensor:
    """Laplacian energy ratio (b,), reconstruction over original (b, c, h, w) in [-1, 1]; 1 = as sharp."""
    assert reconstruction.shape == original.shape, (
        f"sharpness inputs differ in shape: {tuple(reconstruction.shape)} vs {tuple(original.shape)}"
    )
    return (laplacian_energy(reconstruction) + EPS) / (laplacian_energy(original) + EPS)
