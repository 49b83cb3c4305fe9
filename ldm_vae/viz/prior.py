"""Samples from the autoencoder's prior: decode z ~ N(0, I) mapped back to the latent scale.

A KL autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; LDM's KL-f8) is trained
with a KL term that pulls every posterior q(z|x) towards N(0, I), so its scaled latents fill a Gaussian blob
and a draw from N(0, I) lands among them: decoded, it is shape-like, if blurry. A plain autoencoder (KL weight
0) puts its latents wherever reconstruction likes; rescaling them to unit variance does not make them
Gaussian, so its prior samples decode to garbage. LDM's tiny KL weight sits in between. The samples show how
close the latent space is to the N(0, I) the diffusion model starts from, not how good a generator the
autoencoder is.

A VQModel has no continuous prior to sample: its latent is a grid of codes whose prior is learned later (a
transformer or the latent diffusion model). Uniform random codes would only show the codebook's texture, not a
sample, so `prior_samples` refuses VQ models.
"""

import torch
from diffusers import AutoencoderKL, VQModel
from torch import Tensor

from ldm_vae.errors import ConfigError
from ldm_vae.models.autoencoder_kl import latent_shape
from ldm_vae.models.normalization import latent_shift_and_scale


@torch.no_grad()
def prior_samples(
    vae: AutoencoderKL,
    num_samples: int,
    generator: torch.Generator | None = None,
    resolution_px: int | None = None,
) -> Tensor:
    """Images (n, 3, H, W) in [-1, 1] decoded from z = eps / scale + shift, eps ~ N(0, I) (n, c, H/f, W/f).

    eps is drawn on the CPU from `generator`, so a seed gives the same samples on any device. H = W =
    `resolution_px`, by default the model's `sample_size`.
    """
    if isinstance(vae, VQModel):
        raise ConfigError(
            "prior samples need an AutoencoderKL: a VQModel's latent prior is over discrete codes and is "
            "learned by the second stage, not N(0, I)"
        )
    param = next(vae.parameters())
    shape = latent_shape(vae, resolution_px or int(vae.config.sample_size))  # (c, H/f, W/f)
    eps = torch.randn((num_samples, *shape), generator=generator)
    shift, scale = latent_shift_and_scale(vae)
    z = eps / scale + shift  # the inverse of z_model = (z - shift) * scale
    return vae.decode(z.to(param.device, param.dtype)).sample.clamp(-1.0, 1.0)
