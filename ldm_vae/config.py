"""Typed configs: dataclasses with documented defaults, YAML presets and strict `key=value` overrides.

Every setting a job reads lives here. Unknown keys and ill-typed values are rejected before any work
starts, with a one-line `ConfigError` that names the key (nanoGPT's strict configurator, EDM2's
validate-before-build).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ldm_vae.errors import ConfigError

# Presets ship inside the wheel as ldm_vae/configs; in a checkout they are the top-level configs/ folder.
_HERE = Path(__file__).resolve().parent
PRESET_DIR = _HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"


@dataclass(frozen=True)
class Bounds:
    """A numeric range declared next to a config field (or a command-line option), checked on load."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        def text(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        low = (
            f"[{text(self.ge)}"
            if self.ge is not None
            else (f"({text(self.gt)}" if self.gt is not None else None)
        )
        high = (
            f"{text(self.le)}]"
            if self.le is not None
            else (f"{text(self.lt)})" if self.lt is not None else None)
        )
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        return f"{'<=' if self.le is not None else '<'} {high[:-1]}"

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def check(self, key: str, value: Any) -> None:
        """`value` (None passes: optional fields; lists: every item) must lie in the range."""
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if item is not None and not self.holds(item):
                name = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{name}={item!r}: must be {self.describe()}")


def ranged(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **bounds: float) -> Any:
    """A dataclass field with its allowed range: `batch_size: int = ranged(4, ge=1)`."""
    return field(default=default, default_factory=factory, metadata={"bounds": Bounds(**bounds)})


def bounded_option(kind: type, **bounds: float) -> Any:
    """An argparse `type=` for a number in a range, so command options are checked like config keys."""
    limits = Bounds(**bounds)

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not limits.holds(value):
            raise argparse.ArgumentTypeError(f"must be {limits.describe()}, got {text}")
        return value

    return parse


def add_image_data_options(parser: argparse.ArgumentParser, builtin_samples: int) -> None:
    """--data, --resolution and --builtin-samples: how encode, eval-ae and interpolate name their images."""
    parser.add_argument("--data", default="builtin:shapes", help="builtin:NAME, an image folder, hf: or wds:")
    parser.add_argument(
        "--resolution",
        type=bounded_option(int, ge=8),
        default=None,
        help="pixels; default: the model's sample_size",
    )
    parser.add_argument(
        "--builtin-samples",
        type=bounded_option(int, ge=2),
        default=builtin_samples,
        help="size of a builtin dataset",
    )
    add_column_options(parser)


def add_column_options(parser: argparse.ArgumentParser) -> None:
    """--image-column, --label-column, --caption-column: hf: columns or wds: extensions (see DataConfig)."""
    for part in ("image", "label", "caption"):
        parser.add_argument(f"--{part}-column", help=f"hf: column / wds: extension holding the {part}")


@dataclass
class DataConfig:
    source: str = "builtin:shapes"  # builtin:NAME, an image folder, hf:NAME_OR_PATH[:split] or wds:PATTERN
    image_column: str | None = None  # hf: column / wds: member extension holding the image; None = detect
    label_column: str | None = None  # hf: column / wds: extension holding the class; None = detect
    caption_column: str | None = None  # hf: column / wds: extension holding the caption; None = detect
    # shorter side resized, then centre-cropped to a square of this size
    resolution_px: int = ranged(32, ge=8)
    builtin_samples: int = ranged(8192, ge=2)  # number of samples a builtin dataset generates
    held_out_samples: int = ranged(256, ge=1)  # deterministic held-out split used by the report
    random_flip: bool = True  # horizontal flip with probability 0.5
    num_workers: int = ranged(2, ge=0)  # DataLoader worker processes per training process
    # global: any sample at any stream position (2 processes == 1); shards (wds:, hf:): each process and
    # worker reads its own shards, for storage where shard-by-shard reads are faster (ShardStreamSampler)
    order: Literal["global", "shards"] = "global"


@dataclass
class QuantizerConfig:
    """Quantizer of model.kind: vq (see ldm_vae/models/quantizer/). kind picks a learned codebook (vq, whose
    defaults are the techniques that keep a codebook alive), an FSQ grid (fsq) or LFQ signs (lfq)."""

    num_codes: int = ranged(16384, ge=2, le=2**31 - 1)  # codebook size k
    # vq: code dimension = quant_conv's output channels (the export's vq_embed_dim); None = latent_channels
    code_dim: int | None = ranged(8, ge=1)
    update: Literal["ema", "gradient"] = "ema"  # EMA codebook, or the plain VQ-VAE codebook loss
    decay: float = ranged(0.99, gt=0, lt=1)  # EMA decay of the codebook statistics
    use_cosine: bool = True  # l2-normalised tokens and codes (stored unit-norm, so export is exact)
    kmeans_init: bool = True  # k-means on the first batch instead of a uniform init
    dead_code_window_steps: int = ranged(100, ge=0)  # re-seed codes unused for this many steps; 0 = never
    # beta, on the encoder term (VQ-VAE eq. 3, not diffusers' legacy order)
    commitment_weight: float = ranged(0.25, ge=0)
    # warn when held-out codebook usage falls below this fraction
    usage_warning_below: float = ranged(0.5, ge=0, le=1)
    kind: Literal["vq", "fsq", "lfq"] = "vq"  # learned codebook, FSQ grid (levels) or LFQ signs (lfq_bits)
    gradient: Literal["straight_through", "rotation"] = "straight_through"  # vq: copy or rotation trick
    # fsq: levels per channel, each >= 2; prod(levels) codes, at most 2**18 ([8, 5, 5, 5] = 1000)
    levels: list[int] = ranged(factory=lambda: [8, 5, 5, 5], ge=2)
    lfq_bits: int = ranged(10, ge=1)  # lfq: channels, each a sign: 2**lfq_bits codes, at most 18 bits
    # lfq: weight of (per-token entropy - codebook_entropy_weight * entropy of the batch's mean assignment)
    entropy_weight: float = ranged(0.1, ge=0)
    codebook_entropy_weight: float = ranged(1.0, ge=0)  # lfq: gamma, how hard the batch is spread over codes
    entropy_temperature: float = ranged(0.01, gt=0)  # lfq: soft assignment softmax(-|u - c|^2 / temperature)


@dataclass
class ModelConfig:
    kind: Literal["kl", "vq"] = "kl"  # AutoencoderKL or VQModel
    block_out_channels: list[int] = ranged(factory=lambda: [128, 256, 512, 512], gt=0)  # f = 2**(len-1)
    layers_per_block: int = ranged(2, ge=1)  # ResNet blocks per resolution level (LDM num_res_blocks)
    latent_channels: int = ranged(4, ge=1)  # z channels
    norm_num_groups: int = ranged(32, ge=1)  # GroupNorm groups; must divide every block width
    mid_block_attention: bool = True  # LDM keeps a mid-block attention even with attn_resolutions: []
    posterior_logvar_init: float | None = None  # start log sigma^2 of the posterior here; None = ~0 (LDM)
    # a plain autoencoder (kind: kl, loss.kl_weight=0): decode the posterior mean, variance pinned at e^-30
    # (posterior_logvar_init is then unused)
    deterministic: bool = False
    init_from: str | None = None  # a diffusers AutoencoderKL folder to start from (e.g. an SD VAE)
    train_decoder_only: bool = False  # freeze encoder and quant_conv (SD ft-EMA/ft-MSE style)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)  # kind: vq only


@dataclass
class LossConfig:
    reconstruction: Literal["l1", "l2"] = "l1"  # per-pixel term
    perceptual_weight: float = ranged(1.0, ge=0)  # LPIPS-VGG weight; 0 disables it (and its weight files)
    lpips_vgg16_path: str = ""  # torchvision VGG16 weights; "" = torch hub cache
    lpips_heads_path: str = ""  # LPIPS v0.1 vgg.pth; "" = the file inside an installed `lpips` package
    # beta, relative to the per-pixel SUM as in LDM (see losses/autoencoder.py)
    kl_weight: float = ranged(1e-6, ge=0)
    # weight of the quantizer's loss (kind: vq), as taming's codebook_weight
    codebook_weight: float = ranged(1.0, ge=0)
    learn_logvar: bool = False  # learn the output log-variance (it really is optimised here)
    logvar_init: float = 0.0  # initial output log-variance
    # PatchGAN weight on top of the adaptive weight; 0 disables the GAN
    disc_weight: float = ranged(0.5, ge=0)
    disc_start_steps: int = ranged(50001, ge=0)  # generator steps before the adversarial term enters
    # the discriminator trains this many steps before its loss enters
    disc_warmup_steps: int = ranged(0, ge=0)
    disc_layers: int = ranged(3, ge=1)  # PatchGAN depth (3: 70 px receptive field)
    disc_channels: int = ranged(64, ge=1)  # PatchGAN width of the first layer
    disc_norm: Literal["group", "batch"] = "group"  # batch makes D depend on the per-process batch
    adaptive_weight_max: float = ranged(1e4, gt=0)  # clamp of the adaptive weight
    # LeCAM regulariser on the discriminator (MAGVIT-v2 uses 0.001); 0 = off
    lecam_weight: float = ranged(0.0, ge=0)
    lecam_decay: float = ranged(0.99, ge=0, lt=1)  # EMA decay of the mean real/fake logits LeCAM anchors to
    # EQ-VAE: >= 0; decode a scaled/rotated latent vs the same image; 0 = off
    equivariance_weight: float = ranged(0.0, ge=0)


@dataclass
class OptimConfig:
    """AdamW and the LR schedule; defaults are the latent UNet's (DiT/diffusers train_unconditional)."""

    lr: float = ranged(1e-4, gt=0)  # learning rate (not scaled by batch size: set what you mean)
    adam_betas: list[float] = ranged(factory=lambda: [0.9, 0.999], ge=0, lt=1)
    weight_decay: float = ranged(0.0, ge=0)  # AdamW decoupled weight decay
    adam_eps: float = ranged(1e-8, gt=0)  # AdamW epsilon; large values make steps proportional to gradients
    warmup_steps: int = ranged(0, ge=0)  # linear LR warm-up from 0
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr_ratio: float = ranged(0.1, ge=0, le=1)  # cosine floor, as a fraction of lr
    # clip the global grad norm at this value; 0 = no clipping (norm still logged)
    grad_clip: float = ranged(0.0, ge=0)


@dataclass
class AutoencoderOptimConfig(OptimConfig):
    # autoencoder learning rate (LDM's base_learning_rate, not scaled by batch)
    lr: float = ranged(4.5e-6, gt=0)
    adam_betas: list[float] = ranged(factory=lambda: [0.5, 0.9], ge=0, lt=1)  # LDM/taming betas
    disc_lr: float | None = ranged(None, gt=0)  # discriminator learning rate; None = lr


@dataclass
class TrainConfig:
    batch_size: int = ranged(4, ge=1)  # images per process per micro-batch
    grad_accum_steps: int = ranged(1, ge=1)  # micro-batches per optimizer step
    max_steps: int = ranged(100_000, ge=1)  # optimizer steps
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; master weights stay fp32
    # EMA of the trained weights (warm-up (1+n)/(10+n) up to this)
    ema_decay: float = ranged(0.999, ge=0, lt=1)
    checkpoint_every_steps: int = ranged(1000, ge=1)  # full training state, for resuming
    checkpoint_total_limit: int = ranged(3, ge=1)  # keep this many checkpoints
    resume: str | None = None  # "latest" or a checkpoint folder
    log_every_steps: int = ranged(50, ge=1)  # scalars to TensorBoard and stats.jsonl
    image_every_steps: int = ranged(500, ge=1)  # reconstruction or sample grids to TensorBoard
    max_nonfinite_steps: int = ranged(5, ge=1)  # stop after this many non-finite losses in a row
    use_channels_last: bool = False  # channels_last memory format (faster convs on GPU)
    use_compile: bool = False  # torch.compile the trained model
    # recompute activations in the backward (diffusers' enable_gradient_checkpointing): less memory, slower
    gradient_checkpointing: bool = False
    # the device's peak TFLOP/s, the unit of the logged MFU; None = measure a dense matmul at start
    peak_tflops: float | None = ranged(None, gt=0)


@dataclass
class ExportConfig:
    scaling_samples: int = ranged(1024, ge=1)  # training images encoded to measure scaling_factor = 1/std(z)
    report_samples: int = ranged(16, ge=1)  # images in the reconstruction grid


@dataclass
class AutoencoderTrainConfig:
    run_dir: str = "runs/autoencoder"  # checkpoints, logs, export and report go here
    seed: int = 0  # drives data order, augmentation, posterior noise and init
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: AutoencoderOptimConfig = field(default_factory=AutoencoderOptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        validate_autoencoder_config(self)


# ---------------------------------------------------------------------------------------------------
# Latent diffusion (train/ldm.py)


@dataclass
class LatentDataConfig:
    latents: str = "runs/latents"  # a latent store written by `ldm-vae encode`
    autoencoder: str | None = None  # the autoencoder folder that decodes them; None = the one in the manifest
    mode: Literal["sample", "mean"] = "sample"  # KL: draw z from the stored posterior, or use its mean
    normalization: Literal["scale", "shift_scale", "per_channel", "none"] = "scale"  # see LatentDataset
    # read the stored flipped latents this often (needs `encode --flip`)
    flip_probability: float = ranged(0.0, ge=0, le=1)
    num_workers: int = ranged(2, ge=0)  # DataLoader worker processes per training process


@dataclass
class UNetConfig:
    """A diffusers UNet2DModel (UNet2DConditionModel for text); in/out channels and sample size come from the
    latent store."""

    block_out_channels: list[int] = ranged(factory=lambda: [224, 448, 672, 896], gt=0)  # one per level
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True, True])  # self-attention
    layers_per_block: int = ranged(2, ge=1)  # ResNet blocks per level
    attention_head_dim: int = ranged(32, ge=1)  # channels per attention head
    norm_num_groups: int = ranged(32, ge=1)  # GroupNorm groups; must divide every block width
    dropout: float = ranged(0.0, ge=0, lt=1)  # ResNet dropout
    # class: one embedding per store class plus a null class for CFG; text: cross-attention to a CLIP text
    # encoder over the store's captions (the `text` section), exported as a StableDiffusionPipeline; none
    conditioning: Literal["class", "text", "none"] = "class"
    # expected store channels; None = whatever the store holds
    latent_channels: int | None = ranged(None, ge=1)
    # expected store latent height = width; None = whatever the store holds
    latent_size: int | None = ranged(None, ge=1)


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = ranged(1000, ge=2)  # T
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"  # SD: scaled
    beta_start: float = ranged(0.00085, gt=0, lt=1)  # SD / LDM kl-f8 values
    beta_end: float = ranged(0.012, gt=0, lt=1)
    # what the UNet predicts: eps or v on the DDPM path, or (flow) v = eps - x0 on the straight path
    # x_t = (1 - s) x0 + s eps, s in [0, 1] (rectified flow, SD3); sampled by FlowMatchEulerDiscreteScheduler
    prediction_type: Literal["epsilon", "v_prediction", "flow"] = "epsilon"
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"  # training t; logit_normal: SD3's
    logit_mean: float = 0.0  # logit_normal: t/T = sigmoid(N(logit_mean, logit_std)); any real (SD3: 0)
    logit_std: float = ranged(1.0, gt=0)  # logit_normal: > 0 (SD3: 1)
    zero_terminal_snr: bool = False  # DDPM path: rescale betas so t = T-1 is pure noise (Lin et al. 2024)
    # Min-SNR-gamma loss weight (Hang et al. 2023; 5 is theirs); 0 = plain MSE
    min_snr_gamma: float = ranged(0.0, ge=0)
    # chance of training on the null class or, for text, the empty prompt (classifier-free guidance)
    label_dropout: float = ranged(0.1, ge=0, lt=1)


@dataclass
class TextConfig:
    """model.conditioning=text: the CLIP tokenizer and text encoder the UNet cross-attends to, as in SD."""

    tokenizer: str | None = None  # a local tokenizer folder; None = a byte-level BPE on the store's captions
    vocab_size: int = ranged(512, ge=259)  # BPE trained here: tokens incl. 256 bytes and 2 special ones
    max_length: int = ranged(32, ge=3)  # tokens per prompt incl. start and end (CLIP: 77); more are cut
    encoder: str | None = None  # a local CLIPTextModel folder, kept frozen; None = a new one trained jointly
    hidden_size: int = ranged(128, ge=1)  # width of a new encoder = the UNet's cross_attention_dim
    num_layers: int = ranged(2, ge=1)  # transformer layers of a new encoder
    num_heads: int = ranged(4, ge=1)  # attention heads of a new encoder; must divide hidden_size


@dataclass
class SampleConfig:
    """Sample grids during training and in the final report (EMA weights, fixed seed)."""

    scheduler: Literal["ddpm", "ddim", "dpm"] = "ddim"  # DDPM ancestral, DDIM (eta 0), DPM-Solver++
    num_inference_steps: int = ranged(50, ge=1)
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = none
    per_class: int = ranged(8, ge=1)  # images per class in a grid (unconditional: images = 8 x per_class)
    prompts: list[str] = field(default_factory=list)  # text: a grid row each; [] = the first 8 captions


@dataclass
class LDMTrainConfig:
    run_dir: str = "runs/ldm"  # checkpoints, logs, the pipeline and its report go here
    seed: int = 0  # drives data order, posterior draws, diffusion noise, timesteps, label drops and init
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        validate_ldm_config(self)


# ---------------------------------------------------------------------------------------------------
# Loading: YAML + overrides -> dict -> typed dataclasses


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in configs/ (`kl-tiny` -> configs/kl-tiny.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if preset.is_file():
        return preset
    known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config {name_or_path!r}: no such file and no such preset; presets: {', '.join(known)}"
    )


@dataclass(frozen=True)
class RawValue:
    """An override's text, parsed only once the field's type is known: `run_dir=2024` stays a string,
    `train.mixed_precision=no` stays "no" (YAML would read False), `loss.kl_weight=1e-6` becomes a float."""

    text: str


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=1e-4` -> {"a": {"b": RawValue("1e-4")}}."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_steps=1000")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set both as a value and a section")
        node[leaf] = RawValue(raw)
    return tree


def _is_text(hint: Any) -> bool:
    """str, a Literal of strings, or either of them | None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _is_text(args[0])
    return hint is str or (typing.get_origin(hint) is Literal and all(isinstance(a, str) for a in args))


def _parse_raw(raw: RawValue, hint: Any, key: str) -> Any:
    if _is_text(hint) and raw.text not in ("null", "~"):
        return raw.text
    try:
        return yaml.safe_load(raw.text) if raw.text else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {key}={raw.text}: value is not valid YAML ({error.problem})") from None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(
                f"{prefix}{key}: unknown config key; known keys here: {', '.join(sorted(names))}"
            )
    kwargs = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in values.items()}
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a type hint; the few safe conversions YAML needs are done here."""
    if isinstance(value, RawValue):
        value = _parse_raw(value, hint, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        if isinstance(value, bool) and "no" in args:  # YAML 1.1 reads a bare `no` as False
            value = "no" if value is False else value
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list, e.g. {key}=[1,2]")
        return [_coerce(item, args[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    raise TypeError(f"config field {key} has an unsupported type {hint}")  # a bug in this file


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def load_config(cls: type, preset: str | None, overrides: list[str] = ()) -> Any:
    """Preset (file or name) + `key=value` overrides -> a validated config of type `cls`."""
    values = load_yaml(resolve_preset(preset)) if preset else {}
    return build_config(cls, merge(values, parse_overrides(list(overrides))))


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def save_config(config: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------------
# Validation: the ranges declared on the fields, then the rules that relate several fields. It runs when a
# top-level config is built (`__post_init__`), so no job or command checks a config twice.


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_ranges(config: Any, prefix: str = "") -> None:
    """Every field of `config` (recursively) against the `Bounds` declared on it."""
    for spec in dataclasses.fields(config):
        value, key = getattr(config, spec.name), f"{prefix}{spec.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif "bounds" in spec.metadata:
            spec.metadata["bounds"].check(key, value)


def downsampling_factor(model: ModelConfig) -> int:
    """Spatial factor f of an AutoencoderKL: one 2x downsampling between consecutive blocks."""
    return 2 ** (len(model.block_out_channels) - 1)


def check_widths(blocks: list[int], groups: int, key: str) -> None:
    """GroupNorm needs every block width to be a multiple of its group count."""
    _require(len(blocks) >= 1, f"{key}: needs at least one block")
    for i, width in enumerate(blocks):
        _require(
            width % groups == 0,
            f"{key}[{i}]={width}: must be divisible by model.norm_num_groups={groups}",
        )


# Largest vocabulary an FSQ/LFQ export enumerates into `quantize.embedding.weight`. The table is small
# (2^18 x 18 fp32 = 18 MiB), but diffusers' lookup builds a (tokens, codes) distance matrix: 1 MiB per
# token at 2^18 codes.
MAX_ENUMERATED_CODES = 2**18


def check_enumerable(num_codes: int, code_dim: int, what: str) -> None:
    """ConfigError (one line, with the memory) when a vocabulary is too large to export as a VQModel."""
    per_token_mib = num_codes * 4 / 2**20
    _require(
        num_codes <= MAX_ENUMERATED_CODES,
        f"{what}: {num_codes} codes cannot be exported as a diffusers VQModel, which enumerates every code "
        f"in quantize.embedding ({num_codes * code_dim * 4 / 2**20:.0f} MiB) and looks tokens up with a "
        f"tokens x codes distance matrix ({per_token_mib:.0f} MiB per token, {per_token_mib:.0f} GiB for one "
        f"32x32 latent); use at most {MAX_ENUMERATED_CODES} (2^18) codes",
    )


def check_quantizer(model: ModelConfig, loss: LossConfig) -> None:
    """What a diffusers VQModel export can represent, and what the quantizer can train."""
    q = model.quantizer
    _require(
        q.gradient == "straight_through" or q.kind == "vq",
        f"model.quantizer.gradient={q.gradient} with kind={q.kind}: the rotation trick rotates tokens onto a "
        "learned codebook (kind=vq); use gradient=straight_through",
    )
    if q.kind == "fsq":
        _require(len(q.levels) >= 1, "model.quantizer.levels=[]: FSQ needs at least one channel")
        check_enumerable(math.prod(q.levels), len(q.levels), f"model.quantizer.levels={q.levels}")
    if q.kind == "lfq":
        check_enumerable(2**q.lfq_bits, q.lfq_bits, f"model.quantizer.lfq_bits={q.lfq_bits}")
    code_dim = q.code_dim or model.latent_channels
    _require(
        not (q.use_cosine and code_dim == 1 and q.num_codes > 2),
        f"model.quantizer.code_dim=1 with use_cosine=true: only 2 unit vectors exist in 1-D, not "
        f"{q.num_codes} codes; raise code_dim or set use_cosine=false",
    )
    _require(
        model.init_from is None, "model.init_from with model.kind=vq: not supported yet; start from scratch"
    )
    _require(
        not loss.learn_logvar, "loss.learn_logvar=true: only for model.kind=kl (taming's VQ NLL has none)"
    )
    _require(
        model.posterior_logvar_init is None,
        "model.posterior_logvar_init: only for model.kind=kl (a VQ encoder has no posterior variance)",
    )


def check_optim(optim: OptimConfig) -> None:
    _require(
        len(optim.adam_betas) == 2, f"optim.adam_betas={optim.adam_betas}: must be two numbers in [0, 1)"
    )


def validate_autoencoder_config(cfg: AutoencoderTrainConfig) -> None:
    check_ranges(cfg)
    model, data = cfg.model, cfg.data
    check_widths(model.block_out_channels, model.norm_num_groups, "model.block_out_channels")
    if model.kind == "vq":
        check_quantizer(model, cfg.loss)
    _require(
        cfg.loss.lecam_weight == 0 or cfg.loss.disc_weight > 0,
        f"loss.lecam_weight={cfg.loss.lecam_weight}: regularises the discriminator, which "
        "loss.disc_weight=0 turns off; set loss.disc_weight > 0 or loss.lecam_weight=0",
    )
    _require(
        cfg.loss.equivariance_weight == 0 or model.kind == "kl",
        f"loss.equivariance_weight={cfg.loss.equivariance_weight}: only for model.kind=kl; set it to 0",
    )
    _require(
        not cfg.train.gradient_checkpointing or model.kind == "kl",
        "train.gradient_checkpointing=true: diffusers' VQModel does not support it; use model.kind=kl or "
        "set it to false",
    )
    _require(
        not model.train_decoder_only or model.init_from is not None,
        "model.train_decoder_only=true needs model.init_from: a frozen random encoder learns nothing",
    )
    _require(
        not model.deterministic or (model.kind == "kl" and cfg.loss.kl_weight == 0),
        f"model.deterministic=true with model.kind={model.kind}, loss.kl_weight={cfg.loss.kl_weight}: a "
        "deterministic autoencoder is model.kind=kl with loss.kl_weight=0 (its posterior has no variance)",
    )
    _require(
        not model.deterministic or cfg.optim.weight_decay == 0,
        f"model.deterministic=true with optim.weight_decay={cfg.optim.weight_decay}: weight decay would pull "
        "the pinned posterior log-variance (-30) towards 0; set optim.weight_decay=0",
    )
    factor = downsampling_factor(model)
    _require(
        data.resolution_px % factor == 0,
        f"data.resolution_px={data.resolution_px}: must be divisible by the downsampling factor {factor}; "
        f"try {max(factor, data.resolution_px - data.resolution_px % factor)}",
    )
    check_optim(cfg.optim)


def check_text(cfg: LDMTrainConfig) -> None:
    """What the StableDiffusionPipeline export and a UNet2DConditionModel need."""
    model, text = cfg.model, cfg.text
    _require(
        cfg.diffusion.prediction_type != "flow",
        "diffusion.prediction_type=flow with model.conditioning=text: StableDiffusionPipeline samples the "
        "DDPM path only; use epsilon or v_prediction",
    )
    _require(
        cfg.data.normalization == "scale",
        f"data.normalization={cfg.data.normalization} with model.conditioning=text: StableDiffusionPipeline "
        "decodes latents / scaling_factor only; use scale",
    )
    _require(
        model.block_out_channels[-1] % model.attention_head_dim == 0,
        f"model.block_out_channels[-1]={model.block_out_channels[-1]}: the middle block cross-attends, so it "
        f"must be a multiple of model.attention_head_dim={model.attention_head_dim}",
    )
    _require(
        text.encoder is not None or text.hidden_size % text.num_heads == 0,
        f"text.hidden_size={text.hidden_size}: must be divisible by text.num_heads={text.num_heads}",
    )


def validate_ldm_config(cfg: LDMTrainConfig) -> None:
    """What can be checked without the store; train/ldm.py checks the config against the store."""
    check_ranges(cfg)
    model, diffusion, sample = cfg.model, cfg.diffusion, cfg.sample
    check_widths(model.block_out_channels, model.norm_num_groups, "model.block_out_channels")
    _require(
        len(model.attention_levels) == len(model.block_out_channels),
        f"model.attention_levels={model.attention_levels}: needs one entry per level of "
        f"model.block_out_channels={model.block_out_channels}",
    )
    for i, width in enumerate(model.block_out_channels):
        _require(
            not model.attention_levels[i] or width % model.attention_head_dim == 0,
            f"model.block_out_channels[{i}]={width}: an attention level needs a multiple of "
            f"model.attention_head_dim={model.attention_head_dim}",
        )
    _require(
        diffusion.beta_start < diffusion.beta_end,
        f"diffusion.beta_start={diffusion.beta_start}, beta_end={diffusion.beta_end}: need start < end",
    )
    _require(
        not diffusion.zero_terminal_snr or diffusion.prediction_type == "v_prediction",
        f"diffusion.zero_terminal_snr=true with prediction_type={diffusion.prediction_type}: the last step "
        "is pure noise, where eps is the input and flow has no betas; use prediction_type=v_prediction",
    )
    _require(
        not (sample.guidance_scale != 1 and (model.conditioning == "none" or diffusion.label_dropout == 0)),
        f"sample.guidance_scale={sample.guidance_scale}: classifier-free guidance needs "
        "model.conditioning class or text and diffusion.label_dropout > 0; use 1.0",
    )
    if model.conditioning == "text":
        check_text(cfg)
    check_optim(cfg.optim)
