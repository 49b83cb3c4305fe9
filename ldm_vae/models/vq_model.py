"""VQ-regularised autoencoder (VQGAN, Esser et al. 2021; LDM's VQ first stage): a diffusers `VQModel`.

During training one of our quantizers (`model.quantizer.kind`: a learned codebook, an FSQ grid or LFQ signs)
replaces `VQModel.quantize`. `export_vqmodel` writes its `codebook()` into `quantize.embedding.weight`, folds
its projections into `quant_conv` / `post_quant_conv` and returns a plain diffusers `VQModel` whose Euclidean
lookup picks the same codes. `image_to_indices` and `indices_to_image` go image -> tokens -> image with any
exported folder.
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


def build_quantizer(q: QuantizerConfig, dim: int, seed: int) -> Quantizer:
    """The quantizer of `q.kind` for latents with `dim` channels."""
    if q.kind == "fsq":
        return FiniteScalarQuantizer(q.levels, dim, commitment_weight=q.commitment_weight)
    if q.kind == "lfq":
        return LookupFreeQuantizer(
            q.lfq_bits,
            dim,
            commitment_weight=q.commitment_weight,
            entropy_weight=q.entropy_weight,
            codebook_entropy_weight=q.codebook_entropy_weight,
            temperature=q.entropy_temperature,
        )
    return VectorQuantizer(
        num_codes=q.num_codes,
        dim=dim,
        code_dim=q.code_dim or dim,
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
        vq_embed_dim=model.latent_channels,  # the quantizer projects to its code dimension itself
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
        latents = self.vq.quant_conv(self.vq.encoder(images))  # (b, c, H/f, W/f)
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


def _fold_linear_after_conv(conv: nn.Conv2d, linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """linear(conv(x)) as one 1x1 conv: W' = W_l W_c, b' = W_l b_c + b_l."""
    weight, bias = conv.weight[:, :, 0, 0], conv.bias  # (out, in), (out,)
    if isinstance(linear, nn.Identity):
        return weight, bias
    return linear.weight @ weight, linear.weight @ bias + linear.bias


def _fold_conv_after_linear(linear: nn.Module, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(linear(x)) as one 1x1 conv: W' = W_c W_l, b' = W_c b_l + b_c."""
    weight, bias = conv.weight[:, :, 0, 0], conv.bias
    if isinstance(linear, nn.Identity):
        return weight, bias
    return weight @ linear.weight, weight @ linear.bias + bias


@torch.no_grad()
def export_vqmodel(trained: VQModel) -> VQModel:
    """A plain diffusers VQModel (CPU, fp32) computing what `trained` computes with our quantizer."""
    quantizer: Quantizer = trained.quantize
    codes = quantizer.codebook()  # (k, d): every code, in index order
    num_codes, code_dim = codes.shape
    config = {k: v for k, v in trained.config.items() if not k.startswith("_")}
    exported = VQModel.from_config({**config, "num_vq_embeddings": num_codes, "vq_embed_dim": code_dim})
    state = {k: v for k, v in trained.state_dict().items() if k.startswith(("encoder.", "decoder."))}
    w_in, b_in = _fold_linear_after_conv(trained.quant_conv, quantizer.project_in)
    w_out, b_out = _fold_conv_after_linear(quantizer.project_out, trained.post_quant_conv)
    state["quant_conv.weight"], state["quant_conv.bias"] = w_in[:, :, None, None], b_in
    state["post_quant_conv.weight"], state["post_quant_conv.bias"] = w_out[:, :, None, None], b_out
    state["quantize.embedding.weight"] = codes
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
