"""Text conditioning as Stable Diffusion arranges it: a CLIP tokenizer, a `transformers.CLIPTextModel`, and a
`UNet2DConditionModel` that cross-attends to the encoder's last hidden states (Rombach et al. 2022, Sec. 3.3).

The text encoder is either a new one, built from a small `CLIPTextConfig` and trained jointly with the UNet
from scratch (as LDM trained its text transformer), or a local pretrained CLIPTextModel kept frozen (as SD
keeps CLIP ViT-L/14). The tokenizer is either a local folder or a byte-level BPE trained here on the
training captions with CLIPTokenizer's own normaliser, pre-tokeniser and `</w>` word ends: the same format
as SD's tokenizer, so diffusers' `StableDiffusionPipeline` loads it as it loads SD's. Byte-level means no
prompt is out of vocabulary: an unseen word falls apart into known pieces.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, PreTrainedTokenizerBase

from ldm_vae.config import UNetConfig
from ldm_vae.errors import ConfigError
from ldm_vae.models.unet import unet_layout

MAX_SANE_LENGTH = 4096  # a tokenizer without a real model_max_length reports ~1e30


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def train_tokenizer(captions: Iterable[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """A byte-level BPE CLIPTokenizer with at most `vocab_size` tokens (the 256 bytes and 2 special tokens,
    then merges), trained on `captions`; prompts pad and truncate to `max_length` tokens including the start
    and end tokens (CLIP's is 77)."""
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=vocab_size, show_progress=False)
    tokenizer.model_max_length = max_length
    return tokenizer


def load_tokenizer(folder: str | Path, key: str = "text.tokenizer") -> PreTrainedTokenizerBase:
    """A saved tokenizer (any class `AutoTokenizer` knows, e.g. SD's CLIPTokenizer folder)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}={str(folder)!r}: no such folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}={str(folder)!r}: not a tokenizer folder ({error})") from error
    if tokenizer.model_max_length > MAX_SANE_LENGTH:
        raise ConfigError(
            f"{key}={str(folder)!r}: model_max_length={tokenizer.model_max_length} is unset; "
            "set it in the folder's tokenizer_config.json (CLIP: 77)"
        )
    return tokenizer


def write_bpe_files(tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> None:
    """Also write the tokenizer's vocab.json and merges.txt into `folder` (next to its tokenizer.json).

    Recent transformers save only tokenizer.json; the CLIPTokenizer of transformers 4.x (what a user may
    have beside diffusers) reads these two files instead. A no-op for a tokenizer that is not BPE.
    """
    model = tokenizer.backend_tokenizer.model
    if type(model).__name__ == "BPE":
        model.save(str(folder))


def tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> torch.Tensor:
    """Token ids (b, model_max_length), padded and truncated exactly as StableDiffusionPipeline does."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


# ---------------------------------------------------------------------------------------------------------
# text encoder and UNet


def build_text_encoder(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int, num_layers: int, num_heads: int
) -> CLIPTextModel:
    """A new CLIPTextModel sized for the tokenizer: one position per token of `model_max_length`, causal
    self-attention as in CLIP; its last hidden states (b, L, hidden_size) condition the UNet."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def load_text_encoder(
    folder: str | Path, tokenizer: PreTrainedTokenizerBase, key: str = "text.encoder"
) -> CLIPTextModel:
    """A pretrained CLIPTextModel from a local folder, frozen (eval mode, no gradients), checked against the
    tokenizer it will read."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}={str(folder)!r}: no config.json there; expected a CLIPTextModel folder")
    try:
        encoder = CLIPTextModel.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}={str(folder)!r}: cannot load a CLIPTextModel ({error})") from error
    if encoder.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"{key}={str(folder)!r}: its vocabulary has {encoder.config.vocab_size} tokens, the tokenizer "
            f"{len(tokenizer)}; use the tokenizer it was trained with (text.tokenizer)"
        )
    if encoder.config.max_position_embeddings < tokenizer.model_max_length:
        raise ConfigError(
            f"{key}={str(folder)!r}: {encoder.config.max_position_embeddings} positions, but prompts have "
            f"{tokenizer.model_max_length} tokens; lower the tokenizer's model_max_length"
        )
    return encoder.requires_grad_(False).eval()


def build_text_unet(
    model: UNetConfig, latent_shape: tuple[int, int, int], cross_attention_dim: int
) -> UNet2DConditionModel:
    """UNet2DConditionModel for latents (c, h, w): self- and cross-attention at the `attention_levels` and in
    the middle block, attending to text states of width `cross_attention_dim`."""
    return UNet2DConditionModel(
        **unet_layout(model, latent_shape, "CrossAttn"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        # diffusers' `attention_head_dim` here is the number of heads per level (its issue #2011)
        attention_head_dim=tuple(w // model.attention_head_dim for w in model.block_out_channels),
        cross_attention_dim=cross_attention_dim,
    )


class TextConditionedUNet(torch.nn.Module):
    """The UNet and its text encoder as one module, so one DDP wrapper all-reduces both gradients: forward
    encodes the token ids (b, L) and denoises x_t (b, c, h, w) with them. A frozen encoder runs without
    gradients."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    @property
    def trains_text_encoder(self) -> bool:
        return any(p.requires_grad for p in self.text_encoder.parameters())

    def enable_gradient_checkpointing(self) -> None:
        """train.gradient_checkpointing: the UNet's activations (the text encoder's are small)."""
        self.unet.enable_gradient_checkpointing()

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        input_ids: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> UNet2DConditionOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_text_encoder):
            states = self.text_encoder(input_ids)[0]  # (b, L, hidden): what SD's UNet cross-attends to
        return self.unet(sample, timestep, encoder_hidden_states=states, class_labels=class_labels)
