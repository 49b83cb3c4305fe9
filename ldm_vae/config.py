"""Typed configs: dataclasses with documented defaults, YAML presets and strict `key=value` overrides.

Every setting a job reads lives here. Unknown keys and ill-typed values are rejected before any work
starts, with a one-line `ConfigError` that names the key (nanoGPT's strict configurator, EDM2's
validate-before-build).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ldm_vae.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    source: str = "builtin:shapes"  # builtin:NAME or an image folder
    resolution_px: int = 32  # shorter side resized, then centre-cropped to a square of this size
    builtin_samples: int = 8192  # number of samples a builtin dataset generates
    held_out_samples: int = 256  # deterministic held-out split used by the report
    random_flip: bool = True  # horizontal flip with probability 0.5
    num_workers: int = 2  # DataLoader worker processes per training process


@dataclass
class QuantizerConfig:
    """VQ only (model.kind: vq). Defaults: the techniques that keep a codebook alive (vq_anchors.md 1.4)."""

    num_codes: int = 16384  # codebook size k
    code_dim: int | None = 8  # lookup dimension (projections fold into quant_conv at export); None = latent
    update: Literal["ema", "gradient"] = "ema"  # EMA codebook, or the plain VQ-VAE codebook loss
    decay: float = 0.99  # EMA decay of the codebook statistics
    use_cosine: bool = True  # l2-normalised tokens and codes (stored unit-norm, so export is exact)
    kmeans_init: bool = True  # k-means on the first batch instead of a uniform init
    dead_code_window_steps: int = 100  # re-seed codes unused for this many steps; 0 = never
    commitment_weight: float = 0.25  # beta, on the encoder term (VQ-VAE eq. 3, not diffusers' legacy order)
    usage_warning_below: float = 0.5  # warn when held-out codebook usage falls below this fraction


@dataclass
class ModelConfig:
    kind: Literal["kl", "vq"] = "kl"  # AutoencoderKL or VQModel
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])  # f = 2**(len-1)
    layers_per_block: int = 2  # ResNet blocks per resolution level (LDM num_res_blocks)
    latent_channels: int = 4  # z channels
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block width
    mid_block_attention: bool = True  # LDM keeps a mid-block attention even with attn_resolutions: []
    posterior_logvar_init: float | None = None  # start log sigma^2 of the posterior here; None = ~0 (LDM)
    init_from: str | None = None  # a diffusers AutoencoderKL folder to start from (e.g. an SD VAE)
    train_decoder_only: bool = False  # freeze encoder and quant_conv (SD ft-EMA/ft-MSE style)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)  # kind: vq only


@dataclass
class LossConfig:
    reconstruction: Literal["l1", "l2"] = "l1"  # per-pixel term
    perceptual_weight: float = 1.0  # LPIPS-VGG weight; 0 disables it (and its weight files)
    lpips_vgg16_path: str = ""  # torchvision VGG16 weights; "" = torch hub cache
    lpips_heads_path: str = ""  # LPIPS v0.1 vgg.pth; "" = the file inside an installed `lpips` package
    kl_weight: float = 1e-6  # beta, relative to the per-pixel SUM as in LDM (see losses/autoencoder.py)
    codebook_weight: float = 1.0  # weight of the quantizer's loss (kind: vq), as taming's codebook_weight
    learn_logvar: bool = False  # learn the output log-variance (it really is optimised here)
    logvar_init: float = 0.0  # initial output log-variance
    disc_weight: float = 0.5  # PatchGAN weight on top of the adaptive weight; 0 disables the GAN
    disc_start_steps: int = 50001  # generator steps before the adversarial term enters
    disc_warmup_steps: int = 0  # the discriminator trains this many steps before its loss enters
    disc_layers: int = 3  # PatchGAN depth (3: 70 px receptive field)
    disc_channels: int = 64  # PatchGAN width of the first layer
    disc_norm: Literal["group", "batch"] = "group"  # batch makes D depend on the per-process batch
    adaptive_weight_max: float = 1e4  # clamp of the adaptive weight


@dataclass
class OptimConfig:
    """AdamW and the LR schedule; defaults are the latent UNet's (DiT/diffusers train_unconditional)."""

    lr: float = 1e-4  # learning rate (not scaled by batch size: set what you mean)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 0  # linear LR warm-up from 0
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 0.0  # clip the global grad norm at this value; 0 = no clipping (norm still logged)


@dataclass
class AutoencoderOptimConfig(OptimConfig):
    lr: float = 4.5e-6  # autoencoder learning rate (LDM's base_learning_rate, not scaled by batch)
    adam_betas: list[float] = field(default_factory=lambda: [0.5, 0.9])  # LDM/taming betas
    disc_lr: float | None = None  # discriminator learning rate; None = lr


@dataclass
class TrainConfig:
    batch_size: int = 4  # images per process per micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 100_000  # optimizer steps
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast; master weights stay fp32
    ema_decay: float = 0.999  # EMA of the trained weights (warm-up (1+n)/(10+n) up to this)
    checkpoint_every_steps: int = 1000  # full training state, for resuming
    checkpoint_total_limit: int = 3  # keep this many checkpoints
    resume: str | None = None  # "latest" or a checkpoint folder
    log_every_steps: int = 50  # scalars to TensorBoard and stats.jsonl
    image_every_steps: int = 500  # reconstruction or sample grids to TensorBoard
    max_nonfinite_steps: int = 5  # stop after this many non-finite losses in a row
    use_channels_last: bool = False  # channels_last memory format (faster convs on GPU)
    use_compile: bool = False  # torch.compile the trained model


@dataclass
class ExportConfig:
    scaling_samples: int = 1024  # training images encoded to measure scaling_factor = 1/std(z)
    report_samples: int = 16  # images in the reconstruction grid


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


# ---------------------------------------------------------------------------------------------------
# Latent diffusion (train/ldm.py)


@dataclass
class LatentDataConfig:
    latents: str = "runs/latents"  # a latent store written by `ldm-vae encode`
    autoencoder: str | None = None  # the autoencoder folder that decodes them; None = the one in the manifest
    mode: Literal["sample", "mean"] = "sample"  # KL: draw z from the stored posterior, or use its mean
    normalization: Literal["scale", "shift_scale", "per_channel", "none"] = "scale"  # see LatentDataset
    flip_probability: float = 0.0  # read the stored flipped latents this often (needs `encode --flip`)
    num_workers: int = 2  # DataLoader worker processes per training process


@dataclass
class UNetConfig:
    """A diffusers UNet2DModel; in/out channels and sample size come from the latent store."""

    block_out_channels: list[int] = field(default_factory=lambda: [224, 448, 672, 896])  # one per level
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True, True])  # self-attention
    layers_per_block: int = 2  # ResNet blocks per level
    attention_head_dim: int = 32  # channels per attention head
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block width
    dropout: float = 0.0  # ResNet dropout
    class_conditional: bool = True  # one class embedding per store class, plus the null class for CFG
    latent_channels: int | None = None  # expected store channels; None = whatever the store holds
    latent_size: int | None = None  # expected store latent height = width; None = whatever the store holds


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000  # T
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"  # SD: scaled
    beta_start: float = 0.00085  # SD / LDM kl-f8 values
    beta_end: float = 0.012
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # what the UNet predicts
    min_snr_gamma: float = 0.0  # Min-SNR-gamma loss weight (Hang et al. 2023; 5 is theirs); 0 = plain MSE
    label_dropout: float = 0.1  # chance of training on the null class (classifier-free guidance)


@dataclass
class SampleConfig:
    """Sample grids during training and in the final report (EMA weights, fixed seed)."""

    scheduler: Literal["ddpm", "ddim", "dpm"] = "ddim"  # DDPM ancestral, DDIM (eta 0), DPM-Solver++
    num_inference_steps: int = 50
    guidance_scale: float = 1.0  # classifier-free guidance; 1 = none
    per_class: int = 8  # images per class in a grid (unconditional: images = 8 x per_class)


@dataclass
class LDMTrainConfig:
    run_dir: str = "runs/ldm"  # checkpoints, logs, the pipeline and its report go here
    seed: int = 0  # drives data order, posterior draws, diffusion noise, timesteps, label drops and init
    data: LatentDataConfig = field(default_factory=LatentDataConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


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
# Validation: value ranges and cross-field rules, before anything is built


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def downsampling_factor(model: ModelConfig) -> int:
    """Spatial factor f of an AutoencoderKL: one 2x downsampling between consecutive blocks."""
    return 2 ** (len(model.block_out_channels) - 1)


def validate_quantizer(model: ModelConfig, loss: LossConfig) -> None:
    """What a diffusers VQModel export can represent, and what the quantizer can train."""
    q = model.quantizer
    code_dim = q.code_dim or model.latent_channels
    _require(q.num_codes >= 2, f"model.quantizer.num_codes={q.num_codes}: needs at least 2 codes")
    _require(
        q.num_codes <= 2**31 - 1,
        f"model.quantizer.num_codes={q.num_codes}: VQModel's nn.Embedding indices must fit int32 for tokens",
    )
    _require(code_dim >= 1, f"model.quantizer.code_dim={q.code_dim}: must be >= 1")
    _require(
        not (q.use_cosine and code_dim == 1 and q.num_codes > 2),
        f"model.quantizer.code_dim=1 with use_cosine=true: only 2 unit vectors exist in 1-D, not "
        f"{q.num_codes} codes; raise code_dim or set use_cosine=false",
    )
    _require(0 < q.decay < 1, f"model.quantizer.decay={q.decay}: must be in (0, 1)")
    _require(
        q.commitment_weight >= 0, f"model.quantizer.commitment_weight={q.commitment_weight}: must be >= 0"
    )
    _require(
        q.dead_code_window_steps >= 0,
        f"model.quantizer.dead_code_window_steps={q.dead_code_window_steps}: must be >= 0 (0 disables)",
    )
    _require(
        0 <= q.usage_warning_below <= 1,
        f"model.quantizer.usage_warning_below={q.usage_warning_below}: in [0, 1]",
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


def validate_optim(optim: OptimConfig) -> None:
    _require(optim.lr > 0, f"optim.lr={optim.lr}: must be > 0")
    _require(
        len(optim.adam_betas) == 2 and all(0 <= b < 1 for b in optim.adam_betas),
        f"optim.adam_betas={optim.adam_betas}: must be two numbers in [0, 1)",
    )
    _require(optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay}: must be >= 0")
    _require(optim.warmup_steps >= 0, f"optim.warmup_steps={optim.warmup_steps}: must be >= 0")
    _require(0 <= optim.min_lr_ratio <= 1, f"optim.min_lr_ratio={optim.min_lr_ratio}: must be in [0, 1]")
    _require(optim.grad_clip >= 0, f"optim.grad_clip={optim.grad_clip}: must be >= 0 (0 disables)")


def validate_train(train: TrainConfig) -> None:
    for name in (
        "batch_size",
        "grad_accum_steps",
        "max_steps",
        "checkpoint_every_steps",
        "checkpoint_total_limit",
        "log_every_steps",
        "image_every_steps",
        "max_nonfinite_steps",
    ):
        value = getattr(train, name)
        _require(value >= 1, f"train.{name}={value}: must be >= 1")
    _require(0 <= train.ema_decay < 1, f"train.ema_decay={train.ema_decay}: must be in [0, 1)")


def validate_autoencoder_config(cfg: AutoencoderTrainConfig) -> None:
    data, model, loss, optim, train = cfg.data, cfg.model, cfg.loss, cfg.optim, cfg.train
    factor = downsampling_factor(model)
    _require(len(model.block_out_channels) >= 1, "model.block_out_channels: needs at least one block")
    for i, width in enumerate(model.block_out_channels):
        _require(width > 0, f"model.block_out_channels[{i}]={width}: must be > 0")
        _require(
            width % model.norm_num_groups == 0,
            f"model.block_out_channels[{i}]={width}: must be divisible by model.norm_num_groups="
            f"{model.norm_num_groups}",
        )
    _require(model.norm_num_groups >= 1, f"model.norm_num_groups={model.norm_num_groups}: must be >= 1")
    _require(model.latent_channels >= 1, f"model.latent_channels={model.latent_channels}: must be >= 1")
    _require(model.layers_per_block >= 1, f"model.layers_per_block={model.layers_per_block}: must be >= 1")
    if model.kind == "vq":
        validate_quantizer(model, loss)
    _require(
        not model.train_decoder_only or model.init_from is not None,
        "model.train_decoder_only=true needs model.init_from: a frozen random encoder learns nothing",
    )
    _require(data.resolution_px >= 8, f"data.resolution_px={data.resolution_px}: must be >= 8")
    _require(
        data.resolution_px % factor == 0,
        f"data.resolution_px={data.resolution_px}: must be divisible by the downsampling factor {factor}; "
        f"try {max(factor, data.resolution_px - data.resolution_px % factor)}",
    )
    _require(data.builtin_samples >= 2, f"data.builtin_samples={data.builtin_samples}: must be >= 2")
    _require(data.held_out_samples >= 1, f"data.held_out_samples={data.held_out_samples}: must be >= 1")
    _require(data.num_workers >= 0, f"data.num_workers={data.num_workers}: must be >= 0")
    for name in ("perceptual_weight", "kl_weight", "codebook_weight", "disc_weight"):
        value = getattr(loss, name)
        _require(value >= 0, f"loss.{name}={value}: must be >= 0")
    _require(loss.disc_start_steps >= 0, f"loss.disc_start_steps={loss.disc_start_steps}: must be >= 0")
    _require(loss.disc_warmup_steps >= 0, f"loss.disc_warmup_steps={loss.disc_warmup_steps}: must be >= 0")
    _require(loss.disc_layers >= 1, f"loss.disc_layers={loss.disc_layers}: must be >= 1")
    _require(loss.disc_channels >= 1, f"loss.disc_channels={loss.disc_channels}: must be >= 1")
    _require(
        loss.adaptive_weight_max > 0, f"loss.adaptive_weight_max={loss.adaptive_weight_max}: must be > 0"
    )
    _require(optim.disc_lr is None or optim.disc_lr > 0, f"optim.disc_lr={optim.disc_lr}: must be > 0")
    validate_optim(optim)
    validate_train(train)
    _require(
        cfg.export.scaling_samples >= 1, f"export.scaling_samples={cfg.export.scaling_samples}: must be >= 1"
    )
    _require(
        cfg.export.report_samples >= 1, f"export.report_samples={cfg.export.report_samples}: must be >= 1"
    )


def validate_ldm_config(cfg: LDMTrainConfig) -> None:
    """What can be checked without the store; train/ldm.py checks the config against the store."""
    data, model, diffusion, sample = cfg.data, cfg.model, cfg.diffusion, cfg.sample
    _require(
        0 <= data.flip_probability <= 1, f"data.flip_probability={data.flip_probability}: must be in [0, 1]"
    )
    _require(data.num_workers >= 0, f"data.num_workers={data.num_workers}: must be >= 0")
    _require(len(model.block_out_channels) >= 1, "model.block_out_channels: needs at least one level")
    _require(
        len(model.attention_levels) == len(model.block_out_channels),
        f"model.attention_levels={model.attention_levels}: needs one entry per level of "
        f"model.block_out_channels={model.block_out_channels}",
    )
    for i, width in enumerate(model.block_out_channels):
        _require(
            width > 0 and width % model.norm_num_groups == 0,
            f"model.block_out_channels[{i}]={width}: must be > 0 and divisible by model.norm_num_groups="
            f"{model.norm_num_groups}",
        )
        _require(
            not model.attention_levels[i] or width % model.attention_head_dim == 0,
            f"model.block_out_channels[{i}]={width}: an attention level needs a multiple of "
            f"model.attention_head_dim={model.attention_head_dim}",
        )
    _require(model.layers_per_block >= 1, f"model.layers_per_block={model.layers_per_block}: must be >= 1")
    _require(
        model.attention_head_dim >= 1, f"model.attention_head_dim={model.attention_head_dim}: must be >= 1"
    )
    _require(0 <= model.dropout < 1, f"model.dropout={model.dropout}: must be in [0, 1)")
    _require(
        diffusion.num_train_timesteps >= 2,
        f"diffusion.num_train_timesteps={diffusion.num_train_timesteps}: must be >= 2",
    )
    _require(
        0 < diffusion.beta_start < diffusion.beta_end < 1,
        f"diffusion.beta_start={diffusion.beta_start}, beta_end={diffusion.beta_end}: need 0 < start < end "
        "< 1",
    )
    _require(diffusion.min_snr_gamma >= 0, f"diffusion.min_snr_gamma={diffusion.min_snr_gamma}: must be >= 0")
    _require(
        0 <= diffusion.label_dropout < 1,
        f"diffusion.label_dropout={diffusion.label_dropout}: must be in [0, 1)",
    )
    _require(
        not (sample.guidance_scale != 1 and (not model.class_conditional or diffusion.label_dropout == 0)),
        f"sample.guidance_scale={sample.guidance_scale}: classifier-free guidance needs "
        "model.class_conditional=true and diffusion.label_dropout > 0; use 1.0",
    )
    _require(
        sample.num_inference_steps >= 1,
        f"sample.num_inference_steps={sample.num_inference_steps}: must be >= 1",
    )
    _require(sample.per_class >= 1, f"sample.per_class={sample.per_class}: must be >= 1")
    validate_optim(cfg.optim)
    validate_train(cfg.train)
