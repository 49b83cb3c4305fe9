"""KL-regularised autoencoder (Rombach et al. 2022, Sec. 3.1 and Appendix G): a diffusers `AutoencoderKL`.

The model IS `diffusers.AutoencoderKL`; this module builds it from a `ModelConfig` (or loads one from a
folder on disk) and wraps it in `KLTrainingModule`, whose single `forward` runs encode -> sample ->
decode, so that the training step always goes through the DDP wrapper and gradients all-reduce.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ModelMixin
from torch import nn

from ldm_vae.config import ModelConfig
from ldm_vae.errors import ConfigError
from ldm_vae.losses.equivariance import Transform, transformed_decode
from ldm_vae.models.loading import load_autoencoder


def ldm_layout(model: ModelConfig, resolution_px: int) -> dict[str, object]:
    """Constructor arguments shared by AutoencoderKL and VQModel: LDM's Encoder/Decoder, RGB in and out."""
    levels = len(model.block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * levels,
        "up_block_types": ("UpDecoderBlock2D",) * levels,
        "block_out_channels": tuple(model.block_out_channels),
        "layers_per_block": model.layers_per_block,
        "latent_channels": model.latent_channels,
        "norm_num_groups": model.norm_num_groups,
        "sample_size": resolution_px,
        "mid_block_add_attention": model.mid_block_attention,
    }


def build_autoencoder_kl(model: ModelConfig, resolution_px: int) -> AutoencoderKL:
    """A fresh AutoencoderKL with LDM's Encoder/Decoder layout, or the one in `model.init_from`."""
    if model.init_from is not None:
        vae = load_autoencoder(model.init_from, "model.init_from", kinds=("AutoencoderKL",)).train()
    else:
        vae = AutoencoderKL(**ldm_layout(model, resolution_px))
    # posterior_logvar_init is an initialisation: a loaded model keeps its own.
    fresh_init = model.init_from is None and model.posterior_logvar_init is not None
    if not model.deterministic and not fresh_init:
        return vae
    if vae.quant_conv is None:
        raise ConfigError(
            f"model.init_from={model.init_from!r} has no quant_conv (use_quant_conv=false): "
            "model.deterministic needs it to pin the posterior variance"
        )
    # quant_conv outputs (mean, logvar) stacked on channels.
    logvar_weight = vae.quant_conv.weight[model.latent_channels :]
    logvar_bias = vae.quant_conv.bias[model.latent_channels :]
    with torch.no_grad():
        if model.deterministic:
            # logvar = -30 (diffusers' clamp) whatever the input: encode, the latent store and any diffusers
            # user see a point posterior. Nothing moves these rows: the decoder sees the mean, the KL weight
            # and weight decay are 0 (validate_autoencoder_config).
            logvar_weight.zero_()
            logvar_bias.fill_(-30.0)
        else:
            # A random init starts near logvar 0, i.e. latents that are mostly noise: short runs spend
            # their first thousands of steps shrinking it.
            logvar_bias.fill_(model.posterior_logvar_init)
    return vae


def downsampling_factor_of(model: ModelMixin) -> int:
    """Spatial factor f of a diffusers AutoencoderKL or VQModel: one 2x step between consecutive blocks."""
    return 2 ** (len(model.config.block_out_channels) - 1)


def latent_shape(model: ModelMixin, resolution_px: int) -> tuple[int, int, int]:
    """(c, H/f, W/f) of one image's latent, for an AutoencoderKL or a VQModel."""
    side = resolution_px // downsampling_factor_of(model)
    return (model.config.latent_channels, side, side)


def encoder_parameters(vae: AutoencoderKL) -> list[nn.Parameter]:
    """What `train_decoder_only` freezes: the encoder and the 1x1 conv to the posterior moments."""
    params = list(vae.encoder.parameters())
    if vae.quant_conv is not None:
        params += list(vae.quant_conv.parameters())
    return params


class KLTrainingModule(nn.Module):
    """AutoencoderKL plus the learned output log-variance, with one forward for the training step.

    `noise` is passed in (not drawn here) so that the loop can draw it per global sample position:
    then 1 and N processes see identical noise, and a resumed run draws what the uninterrupted one did.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        learn_logvar: bool,
        logvar_init: float,
        decoder_only: bool,
        deterministic: bool = False,
    ):
        super().__init__()
        self.vae = vae
        self.decoder_only = decoder_only
        self.deterministic = deterministic
        logvar = torch.tensor(float(logvar_init))
        if learn_logvar:  # sgm's learn_logvar; LDM declares it but never optimises it
            self.output_logvar = nn.Parameter(logvar)
        else:
            self.register_buffer("output_logvar", logvar)
        if decoder_only:
            for param in encoder_parameters(vae):
                param.requires_grad_(False)

    @property
    def autoencoder(self) -> AutoencoderKL:
        return self.vae

    def forward(
        self, images: torch.Tensor, noise: torch.Tensor, transform: Transform | None = None
    ) -> dict[str, torch.Tensor]:
        """images (b, 3, H, W) in [-1, 1], noise (b, c, H/f, W/f) ~ N(0, I) -> reconstruction, posterior;
        with an EQ-VAE `transform`, also the decoded transformed latent and the transformed images."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
            posterior = self.vae.encode(images).latent_dist  # logvar clamped to [-30, 20]
        # reparameterisation, (b, c, H/f, W/f); a deterministic autoencoder decodes the mean
        latents = posterior.mean if self.deterministic else posterior.mean + posterior.std * noise
        reconstruction = self.vae.decode(latents).sample  # (b, 3, H, W)
        out = {
            "sample": reconstruction,
            "mean": posterior.mean,
            "logvar": posterior.logvar,
            "output_logvar": self.output_logvar,
        }
        if transform is not None:  # here, not in the loss, so the second decode also runs under DDP
            decoded, target = transformed_decode(
                lambda z: self.vae.decode(z).sample, latents, images, transform
            )
            out |= {"equivariant_sample": decoded, "equivariant_target": target}
        return out
