"""Train a latent diffusion UNet on a latent store: `ldm-vae train-ldm CONFIG [key=value ...]`.

Also runs as `python -m ldm_vae.train.ldm CONFIG [key=value ...]` under torchrun or accelerate launch.
The data are the latents `ldm-vae encode` wrote, read by stream position (`PositionSeededLatents`), so the
posterior draws, flips, diffusion noise, timesteps and label drops of every sample depend only on (seed,
position): N processes equal one process at N times the batch, and a resumed run equals an uninterrupted one.
Setup functions come first; `train()` holds the whole loop, one optimizer step top to bottom.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import ModelMixin, UNet2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from ldm_vae.config import DiffusionConfig, LDMTrainConfig, save_config
from ldm_vae.data.sampler import StreamSampler
from ldm_vae.errors import ConfigError
from ldm_vae.latents import LatentDataset, PositionSeededLatents
from ldm_vae.latents.writer import autoencoder_identity
from ldm_vae.losses import diffusion_loss, draw_timesteps
from ldm_vae.losses.diffusion import NoiseScheduler
from ldm_vae.models import build_noise_scheduler, build_unet, load_autoencoder
from ldm_vae.models.normalization import set_latent_normalization
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.pipelines.sampling import sample_by_class, with_scheduler
from ldm_vae.seeds import torch_generator
from ldm_vae.training.accelerator import build_accelerator, ignore_interrupts_in_worker, memory_format
from ldm_vae.training.checkpoints import resume_point
from ldm_vae.training.run import TrainingRun, start_run
from ldm_vae.training.schedule import lr_at, set_lr
from ldm_vae.training.tracking import read_stats
from ldm_vae.viz import save_class_grid, save_loss_curves

TIMESTEP_BINS = 4  # the loss is also logged per quarter of [0, T): where the model is still learning
LOSS_CURVE_KEYS = [
    "train/loss",
    *(f"train/loss_t{i}" for i in range(TIMESTEP_BINS)),
    "train/grad_norm_unet",
]

# ---------------------------------------------------------------------------------------------------
# Setup


def open_store(cfg: LDMTrainConfig) -> LatentDataset:
    """The latent store, checked against what the config expects of it."""
    store = LatentDataset(cfg.data.latents, cfg.data.mode, cfg.data.normalization, cfg.data.flip_probability)
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
    if model.class_conditional and store.num_classes < 2:
        raise ConfigError(
            f"model.class_conditional=true: the store {cfg.data.latents} has {store.num_classes} classes; "
            "set model.class_conditional=false"
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


def build_loader(
    cfg: LDMTrainConfig, accelerator: Accelerator, store: LatentDataset, start: int
) -> DataLoader:
    """Each process reads its slice of the global stream; `start` = samples already seen (resume)."""
    sampler = StreamSampler(
        range(len(store)),
        cfg.train.batch_size,
        accelerator.process_index,
        accelerator.num_processes,
        cfg.seed,
        start_position=start,
    )
    return DataLoader(
        PositionSeededLatents(store, cfg.seed),
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_interrupts_in_worker,
    )


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
    unet: UNet2DModel,
    vae: ModelMixin,
    noise_scheduler: NoiseScheduler,
    classes: list[str],
) -> LatentDiffusionPipeline:
    """The pipeline a user gets: the training schedule under the configured sampler."""
    pipe = LatentDiffusionPipeline(
        vae=vae,
        unet=unet,
        scheduler=noise_scheduler,
        class_names=classes if cfg.model.class_conditional else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return with_scheduler(pipe, cfg.sample.scheduler)


@torch.no_grad()
def ema_samples(pipe: LatentDiffusionPipeline, ema: EMAModel, cfg: LDMTrainConfig) -> torch.Tensor:
    """`sample_by_class` with the EMA weights (what export will hold) in eval mode, then swap back."""
    unet = pipe.unet
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.eval()
    try:
        return sample_by_class(
            pipe, cfg.sample.per_class, cfg.sample.num_inference_steps, cfg.sample.guidance_scale, cfg.seed
        )
    finally:
        unet.train()
        ema.restore(unet.parameters())


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class Session:
    store: LatentDataset
    vae: ModelMixin  # the store's autoencoder, its config holding the store's normalization
    noise_scheduler: NoiseScheduler
    run: TrainingRun  # model "unet"; its EMA follows the UNet


def setup(cfg: LDMTrainConfig) -> Session:
    """Check the config against the store, build, prepare; restore `train.resume` if set."""
    run_dir = Path(cfg.run_dir)
    resume_from = resume_point(run_dir, cfg.train.resume)
    store = open_store(cfg)
    vae = load_decoder(cfg, store)  # on every process, so a wrong autoencoder fails everywhere at once
    accelerator = build_accelerator(
        run_dir, cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.use_compile
    )
    torch.manual_seed(cfg.seed)  # weight init: the same on every process
    unet = build_unet(cfg.model, store.latent_shape, store.num_classes)
    unet.to(accelerator.device, memory_format=memory_format(cfg.train.use_channels_last))
    optimizer = torch.optim.AdamW(
        unet.parameters(),
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
    return Session(store, vae, build_noise_scheduler(cfg.diffusion), run)


def train(cfg: LDMTrainConfig) -> Path:
    """Train, checkpoint, export the pipeline and report; returns the run folder."""
    session = setup(cfg)
    run, store, noise_scheduler = session.run, session.store, session.noise_scheduler
    accelerator, progress, run_dir = run.accelerator, run.progress, run.run_dir
    unet, optimizer, raw_unet = run.models["unet"], run.optimizers["unet"], run.ema_target
    device, layout = accelerator.device, memory_format(cfg.train.use_channels_last)
    null_class = store.num_classes  # build_unet reserves the id after the last class
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        # only the main process samples grids, with the decoder on its device
        pipe = sampling_pipeline(cfg, raw_unet, session.vae.to(device), noise_scheduler, store.classes)
    if hasattr(noise_scheduler, "alphas_cumprod"):  # the DDPM path indexes it every step: on the device once
        noise_scheduler.alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)

    batches = iter(build_loader(cfg, accelerator, store, progress.samples_seen))
    with run.tracking() as tracker:
        tracker.info(
            f"{'resuming' if progress.step else 'starting'} at step {progress.step}: {len(store)} latents "
            f"{list(store.latent_shape)} ({store.kind}, {cfg.data.normalization}), {store.num_classes} "
            f"classes, {accelerator.num_processes} process(es), global batch {run.samples_per_step}, "
            f"{sum(p.numel() for p in raw_unet.parameters()) / 1e6:.2f}M UNet parameters"
        )
        while progress.step < cfg.train.max_steps:
            set_lr(optimizer, lr_at(progress.step, cfg.optim.lr, cfg.optim, cfg.train.max_steps))
            nonfinite = torch.zeros((), device=device)
            for micro in range(cfg.train.grad_accum_steps):
                latents, labels = next(batches)
                latents = latents.to(device, non_blocking=True).contiguous(memory_format=layout)
                first = run.first_position(micro)
                noise, timesteps, drop = diffusion_draws(
                    range(first, first + len(latents)), store.latent_shape, cfg.diffusion, cfg.seed
                )
                noise = noise.to(device).contiguous(memory_format=layout)
                timesteps = timesteps.to(device)
                class_labels = None
                if cfg.model.class_conditional:  # dropped labels become the null class (CFG)
                    class_labels = torch.where(drop, null_class, labels).to(device)
                with accelerator.accumulate(unet), run.counting_flops():
                    loss, per_sample = diffusion_loss(  # through the DDP wrapper: gradients all-reduce
                        unet,
                        noise_scheduler,
                        latents,
                        noise,
                        timesteps,
                        class_labels,
                        cfg.diffusion.min_snr_gamma,
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
                samples = ema_samples(pipe, run.ema, cfg)  # (rows, per_class, 3, H, W)
                grid = make_grid(samples.flatten(0, 1), nrow=cfg.sample.per_class)
                tracker.image("val/samples_ema", grid, progress.step)
            run.checkpoint_if_due(stop_now)

    extra = run.finish()  # last checkpoint and replica check, on every process
    if accelerator.is_main_process and not run.sharded:
        run.ema.copy_to(raw_unet.parameters())  # training is over: the export holds the EMA weights
        export_pipeline(cfg, pipe, extra)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run_dir


def export_checkpoint(cfg: LDMTrainConfig) -> dict[str, object]:
    """`ldm-vae export`: the pipeline of the checkpoint `cfg.train.resume` names, with its EMA weights."""
    session = setup(cfg)
    run = session.run
    pipe = sampling_pipeline(cfg, run.ema_target, session.vae, session.noise_scheduler, session.store.classes)
    run.ema.copy_to(run.ema_target.parameters())
    return export_pipeline(cfg, pipe, {**run.progress.state_dict(), "num_processes": 1})


# ---------------------------------------------------------------------------------------------------
# Export and report


def export_pipeline(cfg: LDMTrainConfig, pipe: LatentDiffusionPipeline, extra: dict) -> dict[str, object]:
    """Save the pipeline, check that the saved copy samples identically, write samples.png and report.json."""
    run_dir = Path(cfg.run_dir)
    pipe.unet.eval()
    pipe.save_pretrained(run_dir / "pipeline")
    reloaded = LatentDiffusionPipeline.from_pretrained(run_dir / "pipeline").to(pipe.device)
    reloaded.set_progress_bar_config(disable=True)
    check = dict(per_class=1, num_inference_steps=4, guidance_scale=cfg.sample.guidance_scale, seed=cfg.seed)
    reload_max_abs_diff = (
        (sample_by_class(pipe, **check) - sample_by_class(reloaded, **check)).abs().max().item()
    )

    samples = sample_by_class(
        pipe, cfg.sample.per_class, cfg.sample.num_inference_steps, cfg.sample.guidance_scale, cfg.seed
    )
    save_class_grid(samples, run_dir / "samples.png", pipe.config.class_names)
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
