"""Full-reference image metrics for autoencoder reconstructions, and the bicubic baseline they must beat.

PSNR, and SSIM from Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity"
(IEEE TIP 2004), Eq. 13, with its standard 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, as
reported by LDM (Rombach et al., CVPR 2022, Table 8) and the SD-VAE model cards. Both come from
`torchmetrics.functional.image`, computed per image on [0, 1] with data_range 1 (SSIM averaged over RGB).
"""

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ldm_vae.errors import ConfigError


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1] in fp32, clipped as a saved image would be (decoders overshoot the range)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """PSNR in dB per image (b,) for images (b, c, h, w) in [-1, 1]; +inf where the two are identical.

    The report layer decides how to cap or drop the inf of a perfect reconstruction.
    """
    assert x.shape == y.shape, f"psnr inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}"
    return peak_signal_noise_ratio(_to_unit(x), _to_unit(y), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """SSIM per image (b,) for images (b, c, h, w) in [-1, 1]; 1 for identical images (Wang 2004, Eq. 13).

    torchmetrics drops the (kernel_size - 1) / 2 = 5 px border where the window does not fit, so images need
    at least 11 px per side.
    """
    assert x.shape == y.shape, f"ssim inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}"
    return structural_similarity_index_measure(_to_unit(x), _to_unit(y), data_range=1.0, reduction="none")


def bicubic_baseline(x: Tensor, factor: int) -> Tensor:
    """Bicubic down by `factor` (antialiased) and back up, clipped to [-1, 1]; same shape as x (b, c, h, w).

    An f-`factor` autoencoder stores (h/f, w/f) positions, so this is the reconstruction it must beat with the
    same spatial budget (it has c latent channels where this keeps 3 pixel channels).
    """
    b, c, h, w = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ConfigError(f"bicubic_baseline: factor={factor} must be >= 1 and divide the image size {h}x{w}")
    size = (h // factor, w // factor)
    small = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True)  # (b, c, h/f, w/f)
    up = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)  # (b, c, h, w)
    return up.clamp(-1.0, 1.0).to(x.dtype)
