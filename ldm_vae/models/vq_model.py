"""VQ-regularised autoencoder (VQGAN, Esser et al. 2021; LDM's VQ first stage): a diffusers `VQModel`.

During training one of our quantizers (`model.quantizer.kind`: a learned codebook, an FSQ grid or LFQ signs)
replaces `VQModel.quantize`. `quant_conv` maps the encoder's `latent_channels` to the code dimension
(`vq_embed_dim`) and `post_quant_conv` maps back, so the quantizer needs no projection of its own and the
trained model already has the exported layout. `export_vqmodel` writes the quantizer's `codebook()` into
`quantize.embedding.weight` and copies everything else: the plain diffusers `VQModel` computes the same tokens
bit for bit and its Euclidean lookup picks the same codes. `image_to_indices` and `indices_to_image` go
image -> tokens -> image with any exported folder.
"""

from __future__ import annotations

import torch
from diffusers import VQModel
from torch import nn

from ldm_vae.config import ModelConfig, QuantizerConfig
from ldm_vae.models.autoencoder_kl import ldm_layout
from ldm_vae.models.quantizer import (
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    Quantizer,
    VectorQuantizer,
)


def code_dim_of(q: QuantizerConfig, latent_channels: int) -> int:
    """Channels of a token: quant_conv's output (`vq_embed_dim`)."""
    if q.kind == "fsq":
        return len(q.levels)
    if q.kind == "lfq":
        return q.lfq_bits
    return q.code_dim or latent_channels


def build_quantizer(q: QuantizerConfig, latent_channels: int, seed: int) -> Quantizer:
    """The quantizer of `q.kind`, for tokens of `code_dim_of(q, latent_channels)` channels."""
    if q.kind == "fsq":
        return FiniteScalarQuantizer(q.levels, commitment_weight=q.commitment_weight)
    if q.kind == "lfq":
        return LookupFreeQuantizer(
            q.lfq_bits,
            commitment_weight=q.commitment_weight,
            entropy_weight=q.entropy_weight,
            codebook_entropy_weight=q.codebook_entropy_weight,
            temperature=q.entropy_temperature,
        )
    return VectorQuantizer(
        num_codes=q.num_codes,
        dim=code_dim_of(q, latent_channels),
        commitment_weight=q.commitment_weight,
        update=q.update,
        gradient=q.gradient,
        decay=q.decay,
        use_cosine=q.use_cosine,
        kmeans_init=q.kmeans_init,
        dead_code_window_steps=q.dead_code_window_steps,
        seed=seed,
    )


def build_vqmodel(model: ModelConfig, resolution_px: int, seed: int) -> VQModel:
    """A VQModel with LDM's Encoder/Decoder layout whose `quantize` is our trainable quantizer."""
    quantizer = build_quantizer(model.quantizer, model.latent_channels, seed)
    vq = VQModel(
        **ldm_layout(model, resolution_px),
        num_vq_embeddings=quantizer.num_codes,
        vq_embed_dim=quantizer.dim,  # quant_conv: latent_channels -> code dimension
        lookup_from_codebook=True,
    )
    vq.quantize = quantizer
    return vq


class VQTrainingModule(nn.Module):
    """VQModel with one forward for the training step (encode -> quantize -> decode through DDP)."""

    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    @property
    def autoencoder(self) -> VQModel:
        return self.vq

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """images (b, 3, H, W) in [-1, 1] -> reconstruction, pre-quantisation latents, codes, VQ loss."""
        latents = self.vq.quant_conv(self.vq.encoder(images))  # (b, d, H/f, W/f) the tokens
        quantized, vq_loss, (perplexity, usage, indices) = self.vq.quantize(latents)
        reconstruction = self.vq.decoder(self.vq.post_quant_conv(quantized))
        return {
            "sample": reconstruction,
            "latents": latents,
            "vq_loss": vq_loss,
            "perplexity": perplexity,
            "usage": usage,  # (k,) code counts of this step, all processes
            "indices": indices,  # (b, H/f, W/f)
        }


@torch.no_grad()
def export_vqmodel(trained: VQModel) -> VQModel:
    """A plain diffusers VQModel (CPU, fp32) computing what `trained` computes with our quantizer."""
    config = {k: v for k, v in trained.config.items() if not k.startswith("_")}
    exported = VQModel.from_config(config)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("quantize.")}
    state["quantize.embedding.weight"] = trained.quantize.codebook()  # (k, d): every code, in index order
    exported.load_state_dict({k: v.detach().float().cpu().clone() for k, v in state.items()}, strict=True)
    return exported.eval()


@torch.no_grad()
def encode_to_codes(vq: VQModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (b, 3, H, W) in [-1, 1] -> pre-quantisation latents (b, d, h, w), code ids (b, h, w) int64."""
    latents = vq.encode(images).latents
    _, _, (_, _, indices) = vq.quantize(latents)  # flat (b*h*w,) in diffusers, (b, h, w) in ours
    return latents, indices.reshape(latents.shape[0], *latents.shape[2:]).long()


def image_to_indices(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """images (b, 3, H, W) in [-1, 1] -> code indices (b, H/f, W/f) int64, with any diffusers VQModel."""
    return encode_to_codes(vq, images)[1]


@torch.no_grad()
def indices_to_image(vq: VQModel, indices: torch.Tensor) -> torch.Tensor:
    """code indices (b, h, w) -> images (b, 3, H, W), through the codebook and the decoder."""
    b, h, w = indices.shape
    shape = (b, h, w, vq.config.vq_embed_dim)
    if vq.config.lookup_from_codebook:  # VQModel.decode then reads `h` as indices
        return vq.decode(indices, force_not_quantize=True, shape=shape).sample
    codes = vq.quantize.get_codebook_entry(indices.reshape(-1), shape)  # (b, d, h, w)
    return vq.decode(codes, force_not_quantize=True).sample
