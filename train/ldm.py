"""Train a latent diffusion UNet on a latent store: `ldm-vae train-ldm CONFIG [key=value ...]`.

Also runs as `python -m ldm_vae.train.ldm CONFIG [key=value ...]` under torchrun or accelerate launch.
The data are the latents `ldm-vae encode` wrote, read by stream position (`PositionSeededLatents`), so the
posterior draws, flips, diffusion noise, timesteps and label drops of every sample depend only on (seed,
position): N processes equal one process at N times the batch, and a resumed run equals an uninterrupted one.
Setup functions come first; `train()` holds the whole loop, one optimizer step top to bottom.

`model.conditioning` picks what the UNet is told: class labels (UNet2DModel, saved as a
LatentDiffusionPipeline), nothing, or the store's captions (UNet2DConditionModel cross-attending to a CLIP
text encoder, saved as a stock StableDiffusionPipeline). A dropped label or caption
(`diffusion.label_dropout`) becomes the null class or the empty prompt, the unconditional branch of
classifier-free guidance.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import ModelMixin, StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from torch import nn
from torchvision.utils import make_grid
from transformers import PreTrainedTokenizerBase

from ldm_vae.config import DiffusionConfig, LDMTrainConfig, save_config
from ldm_vae.errors import ConfigError
from ldm_vae.latents import LatentDataset, PositionSeededLatents
from ldm_vae.latents.writer import autoencoder_identity
from ldm_vae.losses import diffusion_loss, draw_timesteps
from ldm_vae.losses.diffusion import NoiseScheduler
from ldm_vae.models import build_noise_scheduler, build_unet, load_autoencoder
from ldm_vae.models.normalization import set_latent_normalization
from ldm_vae.models.text import (
    TextConditionedUNet,
    build_text_encoder,
    build_text_unet,
    load_text_encoder,
    load_tokenizer,
    tokenize,
    train_tokenizer,
)
from ldm_vae.models.unet import sampling_scheduler
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.pipelines.sampling import sample_by_class, with_scheduler
from ldm_vae.pipelines.stable_diffusion import (
    sample_by_prompt,
    save_stable_diffusion,
    stable_diffusion_pipeline,
)
from ldm_vae.seeds import torch_generator
from ldm_vae.training.accelerator import build_accelerator, memory_format
from ldm_vae.training.checkpoints import resume_point
from ldm_vae.training.run import TrainingRun, start_run
from ldm_vae.training.schedule import lr_at, set_lr
from ldm_vae.training.tracking import read_stats
from ldm_vae.viz import save_class_grid, save_loss_curves

TIMESTEP_BINS = 4  # the loss is also logged per quarter of [0, T): where the model is still learning
DEFAULT_PROMPTS = 8  # text grids without sample.prompts show the store's first captions
LOSS_CURVE_KEYS = [
    "train/loss",
    *(f"train/loss_t{i}" for i in range(TIMESTEP_BINS)),
    "train/grad_norm_unet",
]

# ---------------------------------------------------------------------------------------------------
# Setup


def open_store(cfg: LDMTrainConfig) -> LatentDataset:
    """The latent store, checked against what the config expects of it."""
    text = cfg.model.conditioning == "text"
    store = LatentDataset(
        cfg.data.latents, cfg.data.mode, cfg.data.normalization, cfg.data.flip_probability, captions=text
    )
    channels, height, width = store.latent_shape
    model = cfg.model
    if model.latent_channels is not None and model.latent_channels != channels:
        raise ConfigError(
            f"model.latent_channels={model.latent_channels}: the store {cfg.data.latents} holds "
            f"{channels}-channel latents; encode with the matching autoencoder or set "
            "model.latent_channels=null"
        )
    if model.latent_size is not None and model.latent_size != height:
        raise ConfigError(
            f"model.latent_size={model.latent_size}: the store {cfg.data.latents} holds {height}x{width} "
            "latents; encode at the matching resolution or set model.latent_size=null"
        )
    factor = 2 ** (len(model.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ConfigError(
            f"model.block_out_channels={model.block_out_channels}: {len(model.block_out_channels)} levels "
            f"downsample by {factor}, which does not divide the {height}x{width} latents; use fewer levels"
        )
    if model.conditioning == "class" and store.num_classes < 2:
        raise ConfigError(
            f"model.conditioning=class: the store {cfg.data.latents} has {store.num_classes} classes; "
            "set model.conditioning=none (or text, for a store with captions)"
        )
    if text and not store.manifest.get("captioned_samples"):
        raise ConfigError(
            f"model.conditioning=text: every caption in {cfg.data.latents} is empty; encode a dataset with "
            "captions"
        )
    return store


def load_decoder(cfg: LDMTrainConfig, store: LatentDataset) -> ModelMixin:
    """The autoencoder that made the store, with the store's normalization written into its config.

    The pipeline unscales with `scaling_factor`/`shift_factor` (or per-channel `latents_mean/std`) from the
    VAE config, so writing the store's values there makes sampling invert exactly what training saw.
    """
    identity = store.manifest.get("autoencoder", {})
    folder = cfg.data.autoencoder or identity.get("path")
    if not folder:
        raise ConfigError(f"{cfg.data.latents}/manifest.json names no autoencoder; set data.autoencoder")
    vae = load_autoencoder(folder, "data.autoencoder")
    if identity.get("config_sha256") and autoencoder_identity(vae, folder)["config_sha256"] != identity.get(
        "config_sha256"
    ):
        raise ConfigError(
            f"data.autoencoder={folder!r}: not the autoencoder that encoded {cfg.data.latents} (its config "
            "differs from the manifest's); pass the folder used with `ldm-vae encode --model`"
        )
    scale, shift = store.scale_and_shift()  # (c, 1, 1) each: z_model = (z - shift) * scale
    set_latent_normalization(vae, shift, scale, per_channel=cfg.data.normalization == "per_channel")
    return vae


def prepare_tokenizer(
    cfg: LDMTrainConfig, store: LatentDataset, accelerator: Accelerator, resuming: bool
) -> PreTrainedTokenizerBase:
    """Text: `text.tokenizer`, or a BPE trained on every caption of the store and kept in
    `run_dir/tokenizer`. BPE training breaks ties in hash-map order, so two trainings on the same captions
    can number tokens differently: the main process trains it once, for a new run, and every process (and
    every resume) reads that copy."""
    if cfg.text.tokenizer:
        return load_tokenizer(cfg.text.tokenizer)
    folder = Path(cfg.run_dir) / "tokenizer"
    with accelerator.main_process_first():
        if resuming and not folder.is_dir():
            raise ConfigError(
                f"{folder}: missing, but the checkpoint's text encoder was trained with the token ids it "
                "defines; copy the run folder whole (or set text.tokenizer to that tokenizer)"
            )
        if accelerator.is_main_process and not resuming:
            captions = (store.caption(i) for i in range(len(store)))
            train_tokenizer(captions, cfg.text.vocab_size, cfg.text.max_length).save_pretrained(folder)
        return load_tokenizer(folder, "the run's tokenizer")


def build_denoiser(
    cfg: LDMTrainConfig, store: LatentDataset, tokenizer: PreTrainedTokenizerBase | None
) -> nn.Module:
    """The model the loss calls: a UNet2DModel (class labels or none), or for text the
    UNet2DConditionModel and its text encoder as one TextConditionedUNet."""
    if cfg.model.conditioning != "text":
        return build_unet(cfg.model, store.latent_shape, store.num_classes)
    text = cfg.text
    if text.encoder:
        text_encoder = load_text_encoder(text.encoder, tokenizer)  # frozen
    else:
        text_encoder = build_text_encoder(tokenizer, text.hidden_size, text.num_layers, text.num_heads)
    unet = build_text_unet(cfg.model, store.latent_shape, text_encoder.config.hidden_size)
    return TextConditionedUNet(unet, text_encoder)


def conditioning_inputs(
    conditioning: str,
    labels: torch.Tensor,
    drop: torch.Tensor,
    null_class: int,
    tokenizer: PreTrainedTokenizerBase | None,
    captions: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The model's conditioning keywords for `diffusion_loss`: labels (b,) with the dropped ones the null
    class, or token ids (b, L) of the captions with the dropped ones the empty prompt (as SD trains it)."""
    if conditioning == "class":
        return {"class_labels": torch.where(drop, null_class, labels)}
    if conditioning == "text":
        prompts = [
            "" if dropped else caption for dropped, caption in zip(drop.tolist(), captions, strict=True)
        ]
        return {"input_ids": tokenize(tokenizer, prompts)}
    return {}


def diffusion_draws(
    positions: range, shape: tuple[int, ...], diffusion: DiffusionConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise (b, *shape), timesteps (b,), drop_label (b,) bool), drawn per stream position; timesteps as
    `draw_timesteps` gives them (integers, or floats on the flow path).

    From their own stream (`diffusion`), so they are independent of the posterior draw of the same
    position, and identical for any process count, accumulation or resume point.
    """
    noise, timesteps, drops = [], [], []
    for position in positions:
        generator = torch_generator(seed, "diffusion", position)
        timesteps.append(draw_timesteps(diffusion, 1, generator)[0])
        drops.append(torch.rand((), generator=generator) < diffusion.label_dropout)
        noise.append(torch.randn(shape, generator=generator))
    return torch.stack(noise), torch.stack(timesteps), torch.stack(drops)


def sampling_pipeline(
    cfg: LDMTrainConfig,
    model: nn.Module,
    vae: ModelMixin,
    noise_scheduler: NoiseScheduler,
    classes: list[str],
    tokenizer: PreTrainedTokenizerBase | None,
) -> LatentDiffusionPipeline | StableDiffusionPipeline:
    """The pipeline a user gets, sharing the (unwrapped) model's weights: the training schedule under the
    configured sampler."""
    if cfg.model.conditioning == "text":
        scheduler = sampling_scheduler(noise_scheduler, cfg.sample.scheduler)
        pipe = stable_diffusion_pipeline(vae, model.text_encoder, tokenizer, model.unet, scheduler)
    else:
        pipe = LatentDiffusionPipeline(
            vae=vae,
            unet=model,
            scheduler=noise_scheduler,
            class_names=classes if cfg.model.conditioning == "class" else None,
        )
        pipe = with_scheduler(pipe, cfg.sample.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def grid_prompts(cfg: LDMTrainConfig, store: LatentDataset) -> list[str]:
    """Text: the rows of sample grids, `sample.prompts` or the store's first captions; else none."""
    if cfg.model.conditioning != "text":
        return []
    return cfg.sample.prompts or [store.caption(i) for i in range(min(DEFAULT_PROMPTS, len(store)))]


def sample_grid(
    cfg: LDMTrainConfig,
    pipe: LatentDiffusionPipeline | StableDiffusionPipeline,
    prompts: list[str],
    per_row: int | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """(rows, per_row, 3, H, W) in [0, 1]: a row per prompt (text) or class, at the configured guidance."""
    sample = cfg.sample
    per_row, steps = per_row or sample.per_class, steps or sample.num_inference_steps
    if prompts:
        return sample_by_prompt(pipe, prompts, per_row, steps, sample.guidance_scale, cfg.seed)
    return sample_by_class(pipe, per_row, steps, sample.guidance_scale, cfg.seed)


@torch.no_grad()
def ema_samples(
    cfg: LDMTrainConfig, pipe: object, prompts: list[str], ema: EMAModel, target: nn.Module
) -> torch.Tensor:
    """`sample_grid` with the EMA weights of `target` (what export will hold) in eval mode, then swap back."""
    ema.store(target.parameters())
    ema.copy_to(target.parameters())
    target.eval()
    try:
        return sample_grid(cfg, pipe, prompts)
    finally:
        target.train()
        ema.restore(target.parameters())


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class Session:
    store: LatentDataset
    vae: ModelMixin  # the store's autoencoder, its config holding the store's normalization
    noise_scheduler: NoiseScheduler
    run: TrainingRun  # model "unet" (with the text encoder for text); its EMA follows both
    tokenizer: PreTrainedTokenizerBase | None  # text only
    prompts: list[str]  # text only: the rows of sample grids


def setup(cfg: LDMTrainConfig) -> Session:
    """Check the config against the store, build, prepare; restore `train.resume` if set."""
    run_dir = Path(cfg.run_dir)
    resume_from = resume_point(run_dir, cfg.train.resume)
    store = open_store(cfg)
    vae = load_decoder(cfg, store)  # on every process, so a wrong autoencoder fails everywhere at once
    accelerator = build_accelerator(
        run_dir, cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.use_compile
    )
    tokenizer = None
    if cfg.model.conditioning == "text":
        tokenizer = prepare_tokenizer(cfg, store, accelerator, resuming=resume_from is not None)
    torch.manual_seed(cfg.seed)  # weight init: the same on every process
    unet = build_denoiser(cfg, store, tokenizer)
    unet.to(accelerator.device, memory_format=memory_format(cfg.train.use_channels_last))
    optimizer = torch.optim.AdamW(
        [p for p in unet.parameters() if p.requires_grad],  # not a frozen pretrained text encoder
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.adam_betas),
        weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.adam_eps,
    )
    run = start_run(
        accelerator,
        cfg.train,
        run_dir,
        {"unet": unet},
        {"unet": optimizer},
        ema_target=unet,
        resume_from=resume_from,
        grad_clip=cfg.optim.grad_clip,
        samples_name="latents",
        divergence_advice="lower optim.lr or use bf16 instead of fp16",
    )
    prompts = grid_prompts(cfg, store)
    return Session(store, vae, build_noise_scheduler(cfg.diffusion), run, tokenizer, prompts)


def train(cfg: LDMTrainConfig) -> Path:
    """Train, checkpoint, export the pipeline and report; returns the run folder."""
    session = setup(cfg)
    run, store, noise_scheduler = session.run, session.store, session.noise_scheduler
    accelerator, progress, run_dir = run.accelerator, run.progress, run.run_dir
    unet, optimizer, raw_unet = run.models["unet"], run.optimizers["unet"], run.ema_target
    device, layout = accelerator.device, memory_format(cfg.train.use_channels_last)
    null_class = store.num_classes  # build_unet reserves the id after the last class
    tokenizer, prompts = session.tokenizer, session.prompts
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        # only the main process samples grids, with the decoder on its device
        vae = session.vae.to(device)
        pipe = sampling_pipeline(cfg, raw_unet, vae, noise_scheduler, store.classes, tokenizer)
    if hasattr(noise_scheduler, "alphas_cumprod"):  # the DDPM path indexes it every step: on the device once
        noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)

    stream = PositionSeededLatents(store, cfg.seed)
    batches = iter(run.stream_loader(stream, range(len(store)), cfg.seed, cfg.data.num_workers))
    with run.tracking() as tracker:
        tracker.info(
            f"{'resuming' if progress.step else 'starting'} at step {progress.step}: {len(store)} latents "
            f"{list(store.latent_shape)} ({store.kind}, {cfg.data.normalization}), conditioning "
            f"{cfg.model.conditioning}, {accelerator.num_processes} process(es), global batch "
            f"{run.samples_per_step}, {sum(p.numel() for p in raw_unet.parameters()) / 1e6:.2f}M parameters"
        )
        while progress.step < cfg.train.max_steps:
            set_lr(optimizer, lr_at(progress.step, cfg.optim.lr, cfg.optim, cfg.train.max_steps))
            nonfinite = torch.zeros((), device=device)
            for micro in range(cfg.train.grad_accum_steps):
                latents, labels, *captions = next(batches)  # a text store adds the batch's captions
                latents = latents.to(device, non_blocking=True).contiguous(memory_format=layout)
                first = run.first_position(micro)
                noise, timesteps, drop = diffusion_draws(
                    range(first, first + len(latents)), store.latent_shape, cfg.diffusion, cfg.seed
                )
                noise = noise.to(device).contiguous(memory_format=layout)
                timesteps = timesteps.to(device)
                conditioning = conditioning_inputs(  # dropped: the null class or the empty prompt (CFG)
                    cfg.model.conditioning, labels, drop, null_class, tokenizer, *captions
                )
                conditioning = {key: value.to(device) for key, value in conditioning.items()}
                with accelerator.accumulate(unet), run.counting_flops():
                    loss, per_sample = diffusion_loss(  # through the DDP wrapper: gradients all-reduce
                        unet,
                        noise_scheduler,
                        latents,
                        noise,
                        timesteps,
                        min_snr_gamma=cfg.diffusion.min_snr_gamma,
                        **conditioning,
                    )
                    accelerator.backward(loss)
                nonfinite += ~torch.isfinite(loss.detach())
                run.running.add("train/loss", loss.detach())
                # (b,) in [0, bins); flow timesteps are floats
                bins = (timesteps * TIMESTEP_BINS).long() // cfg.diffusion.num_train_timesteps
                for b in range(TIMESTEP_BINS):
                    in_bin = bins == b
                    run.running.add(f"train/loss_t{b}", per_sample[in_bin].sum(), in_bin.sum())

            stop_now = run.optimizer_step(nonfinite, {"unet": (unet, optimizer)})

            if run.log_due():
                run.log({})
            if run.images_due():
                samples = ema_samples(cfg, pipe, prompts, run.ema, raw_unet)  # (rows, per_class, 3, H, W)
                grid = make_grid(samples.flatten(0, 1), nrow=cfg.sample.per_class)
                tracker.image("val/samples_ema", grid, progress.step)
            run.checkpoint_if_due(stop_now)

    extra = run.finish()  # last checkpoint and replica check, on every process
    if accelerator.is_main_process and not run.sharded:
        run.ema.copy_to(raw_unet.parameters())  # training is over: the export holds the EMA weights
        export_pipeline(cfg, pipe, prompts, extra)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def export_checkpoint(cfg: LDMTrainConfig) -> dict[str, object]:
    """`ldm-vae export`: the pipeline of the checkpoint `cfg.train.resume` names, with its EMA weights."""
    session = setup(cfg)
    run = session.run
    pipe = sampling_pipeline(
        cfg, run.ema_target, session.vae, session.noise_scheduler, session.store.classes, session.tokenizer
    )
    run.ema.copy_to(run.ema_target.parameters())
    return export_pipeline(cfg, pipe, session.prompts, {**run.progress.state_dict(), "num_processes": 1})


# ---------------------------------------------------------------------------------------------------
# Export and report


def export_pipeline(
    cfg: LDMTrainConfig,
    pipe: LatentDiffusionPipeline | StableDiffusionPipeline,
    prompts: list[str],
    extra: dict,
) -> dict[str, object]:
    """Save the pipeline (text: a stock StableDiffusionPipeline), check that the saved copy samples
    identically, write samples.png (a row per class or prompt) and report.json."""
    run_dir = Path(cfg.run_dir)
    pipe.unet.eval()
    if prompts:
        pipe.text_encoder.eval()
        save_stable_diffusion(pipe, run_dir / "pipeline")
        reloaded = StableDiffusionPipeline.from_pretrained(run_dir / "pipeline")
    else:
        pipe.save_pretrained(run_dir / "pipeline")
        reloaded = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline")
    reloaded.to(pipe.device).set_progress_bar_config(disable=True)
    check = dict(per_row=1, steps=4)
    saved, loaded = sample_grid(cfg, pipe, prompts, **check), sample_grid(cfg, reloaded, prompts, **check)
    reload_max_abs_diff = (saved - loaded).abs().max().item()

    samples = sample_grid(cfg, pipe, prompts)
    save_class_grid(samples, run_dir / "samples.png", prompts or pipe.config.class_names)
    stats = read_stats(run_dir)
    save_loss_curves(stats, run_dir / "loss_curves.png", LOSS_CURVE_KEYS)
    report = {
        "pipeline": str(run_dir / "pipeline"),
        "samples": str(run_dir / "samples.png"),
        **extra,
        "final_loss": stats[-1]["train/loss"] if stats else None,
        "latents_per_sec": stats[-1].get("train/latents_per_sec") if stats else None,
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "latent_channels": pipe.unet.config.in_channels,
        "latent_size": pipe.unet.config.sample_size,
        "vae_normalization": {
            key: pipe.vae.config.get(key)
            for key in ("scaling_factor", "shift_factor", "latents_mean", "latents_std")
        },
        "sampler": {
            "scheduler": cfg.sample.scheduler,
            "steps": cfg.sample.num_inference_steps,
            "guidance_scale": cfg.sample.guidance_scale,
        },
        "reload_max_abs_diff": reload_max_abs_diff,
        "conditioning": cfg.model.conditioning,
        "prompts": prompts,
    }
    if prompts:
        report["text_encoder"] = {
            "parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
            "trained": cfg.text.encoder is None,
            "tokenizer_vocab": len(pipe.tokenizer),
            "max_length": pipe.tokenizer.model_max_length,
        }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    print(
        f"pipeline saved to {run_dir / 'pipeline'} (reload identical: {reload_max_abs_diff == 0}); "
        f"samples in {run_dir / 'samples.png'}",
        flush=True,
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """`torchrun -m ldm_vae.train.ldm CONFIG [key=value ...]`: the CLI's train-ldm."""
    from ldm_vae.train.cli import main as cli_main

    return cli_main(["train-ldm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
