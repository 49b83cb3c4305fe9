"""Interpolation strips between the latents of two images, and how evenly they change.

A strip decodes points z(t), t in [0, 1], on a path between two images' latents. `lerp` is the straight
line. `slerp` (Shoemake, "Animating Rotation with Quaternion Curves", SIGGRAPH 1985) follows the great circle,
as White ("Sampling Generative Networks", 2016) recommends for Gaussian latents: in d dimensions they lie near
the shell |z| ~ sqrt(d), and the middle of a straight line between two of them falls inside it, where the
decoder saw no training latents. A well-behaved latent space gives frames that change by small, even steps;
`path_smoothness` measures that, and a jump (a region that decodes to something unrelated) shows as a large
step variance.

KL models interpolate the posterior means; VQ models the pre-quantisation latents, which `VQModel.decode`
quantises, so a VQ strip changes in discrete jumps by construction.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, VQModel
from einops import rearrange
from torch import Tensor

from ldm_vae.errors import ConfigError
from ldm_vae.models.normalization import latent_shift_and_scale

METHODS = ("linear", "slerp")
PARALLEL_COS = 0.9995  # |cos angle| above which slerp falls back to lerp: its 1 / sin(angle) would blow up

Distance = Callable[[Tensor, Tensor], Tensor]  # images (b, 3, H, W) in [-1, 1] twice -> (b,)

# ---------------------------------------------------------------------------------------------------------
# helpers


def _as_batch(t: Tensor | float, z: Tensor) -> Tensor:
    """t, a float or (b,), as a (b,) tensor on the device and in the dtype of latents z (b, ...)."""
    return torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])


def _per_sample(w: Tensor, z: Tensor) -> Tensor:
    """Per-sample weights (b,) -> (b, 1, ..., 1), broadcasting over latents z (b, ...)."""
    return w.view(-1, *([1] * (z.ndim - 1)))


# ---------------------------------------------------------------------------------------------------------
# paths


def lerp(z0: Tensor, z1: Tensor, t: Tensor | float) -> Tensor:
    """(1 - t) z0 + t z1 for latents (b, ...) and t (b,) or a float: exactly z0 at t = 0 and z1 at t = 1."""
    t = _per_sample(_as_batch(t, z0), z0)
    return (1 - t) * z0 + t * z1


def slerp(
    z0: Tensor, z1: Tensor, t: Tensor | float, shift: Tensor | float = 0.0, scale: Tensor | float = 1.0
) -> Tensor:
    """Spherical interpolation of latents (b, ...) per sample, about the prior N(shift, 1 / scale^2).

    The angle W is taken between the flattened prior-space vectors u = (z - shift) * scale, where the prior is
    N(0, I); with Shoemake's weights w0 = sin((1 - t) W) / sin W and w1 = sin(t W) / sin W the path is
    u(t) = w0 u0 + w1 u1, i.e. z(t) = w0 z0 + w1 z1 + (1 - w0 - w1) shift: exactly z0 at t = 0, z1 at t = 1.
    Equal-norm u0, u1 keep their norm along the way. Near-parallel or opposite pairs (|cos W| > PARALLEL_COS)
    fall back to lerp; an opposite pair's path then passes through the prior mean.
    """
    t = _as_batch(t, z0)  # (b,)
    u0 = rearrange((z0 - shift) * scale, "b ... -> b (...)")  # (b, c*h*w)
    u1 = rearrange((z1 - shift) * scale, "b ... -> b (...)")
    cos = F.cosine_similarity(u0, u1, dim=1).clamp(-1.0, 1.0)  # (b,)
    omega = torch.arccos(cos)
    parallel = cos.abs() > PARALLEL_COS
    sin = torch.where(parallel, torch.ones_like(omega), torch.sin(omega))
    w0 = _per_sample(torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / sin), z0)  # (b, 1, ..., 1)
    w1 = _per_sample(torch.where(parallel, t, torch.sin(t * omega) / sin), z0)
    return w0 * z0 + w1 * z1 + (1 - w0 - w1) * shift


# ---------------------------------------------------------------------------------------------------------
# strips


@torch.no_grad()
def encode_latent(vae: ModelMixin, image: Tensor) -> Tensor:
    """image (3, H, W) in [-1, 1] -> latent (c, h, w): posterior mean (KL) or pre-quantisation latent (VQ)."""
    param = next(vae.parameters())
    x = image[None].to(param.device, param.dtype)  # (1, 3, H, W)
    if isinstance(vae, VQModel):
        return vae.encode(x).latents[0]
    return vae.encode(x).latent_dist.mean[0]


@torch.no_grad()
def decode_frames(vae: ModelMixin, latents: Tensor) -> Tensor:
    """latents (n, c, h, w) -> images (n, 3, H, W) in [-1, 1]; a VQModel quantises them first.

    One latent at a time: batched convolutions round differently from single-image ones in the last bits,
    and a strip's end frames must equal the reconstructions `vae(image).sample` exactly.
    """
    return torch.cat([vae.decode(z[None]).sample for z in latents]).clamp(-1.0, 1.0)


def interpolate_pair(vae: ModelMixin, image_a: Tensor, image_b: Tensor, frames: int, method: str) -> Tensor:
    """Decoded frames (frames, 3, H, W) in [-1, 1] on the `method` path from image_a to image_b (3, H, W).

    The first and last frames are the reconstructions of image_a and image_b, bit for bit.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    z0, z1 = encode_latent(vae, image_a), encode_latent(vae, image_b)  # (c, h, w) each
    t = torch.linspace(0.0, 1.0, frames, device=z0.device)  # exactly 0 and 1 at the ends
    z0, z1 = z0.expand(frames, *z0.shape), z1.expand(frames, *z1.shape)  # (frames, c, h, w)
    if method == "linear":
        return decode_frames(vae, lerp(z0, z1, t))
    shift, scale = latent_shift_and_scale(vae)  # (c or 1, 1, 1)
    return decode_frames(vae, slerp(z0, z1, t, shift.to(z0), scale.to(z0)))


# ---------------------------------------------------------------------------------------------------------
# smoothness


def pixel_rms(x: Tensor, y: Tensor) -> Tensor:
    """Root-mean-square pixel difference (b,) of images (b, 3, H, W) in [-1, 1]: the weight-free distance."""
    return (x.float() - y.float()).square().mean(dim=(1, 2, 3)).sqrt()


@torch.no_grad()
def path_smoothness(frames: Tensor, distance: Distance = pixel_rms) -> dict[str, float]:
    """Mean and variance of the steps distance(frame_i, frame_i+1) along a strip (frames, 3, H, W).

    The variance is over the frames - 1 steps (not an estimate of anything, so no Bessel correction).
    Evenly spaced small steps are a smooth path; one large jump among small steps gives a large variance.
    """
    steps = distance(frames[:-1], frames[1:]).float()  # (frames - 1,)
    return {"mean_step": steps.mean().item(), "step_variance": steps.var(correction=0).item()}
