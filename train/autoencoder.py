"""Train a KL autoencoder, LDM's first stage, with accelerate: `ldm-vae train-ae CONFIG [key=value ...]`.

Also runs as `python -m ldm_vae.train.autoencoder CONFIG [key=value ...]` under torchrun or accelerate
launch.
Setup functions come first; `train()` holds the whole loop, one optimizer step top to bottom.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch.utils.data import Dataset

from ldm_vae.config import AutoencoderTrainConfig, LossConfig, save_config
from ldm_vae.data import (
    IndexedImageDataset,
    RandomFlipView,
    build_dataset,
    source_columns,
    spread_picks,
    stream_shards,
    train_held_out_split,
)
from ldm_vae.errors import ConfigError
from ldm_vae.losses import (
    LPIPS,
    PatchDiscriminator,
    adaptive_weight,
    default_heads_path,
    default_vgg16_path,
    draw_transform,
    equivariance_loss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from ldm_vae.losses.autoencoder import kl_loss, reconstruction_nll
from ldm_vae.metrics.latent import active_channels, collapse_warning, kl_per_channel
from ldm_vae.models import (
    KLTrainingModule,
    VQTrainingModule,
    build_autoencoder_kl,
    build_vqmodel,
    downsampling_factor_of,
    latent_shape,
)
from ldm_vae.seeds import position_normals, torch_generator
from ldm_vae.training.accelerator import build_accelerator, memory_format
from ldm_vae.training.autoencoder_report import export_and_report, finish_run
from ldm_vae.training.checkpoints import resume_point
from ldm_vae.training.run import TrainingRun, start_run
from ldm_vae.training.schedule import lr_at, set_lr
from ldm_vae.training.sharding import is_sharded
from ldm_vae.viz import reconstruction_grid

# ---------------------------------------------------------------------------------------------------
# Setup


def build_lpips(loss: LossConfig) -> LPIPS | None:
    """Frozen LPIPS-VGG from local files, or None when the perceptual term is off."""
    if loss.perceptual_weight == 0:
        return None
    return LPIPS.from_files(
        loss.lpips_vgg16_path or default_vgg16_path(), loss.lpips_heads_path or default_heads_path() or ""
    )


def build_models(
    cfg: AutoencoderTrainConfig,
) -> tuple[KLTrainingModule | VQTrainingModule, PatchDiscriminator | None]:
    if cfg.model.kind == "vq":
        module = VQTrainingModule(build_vqmodel(cfg.model, cfg.data.resolution_px, cfg.seed))
    else:
        vae = build_autoencoder_kl(cfg.model, cfg.data.resolution_px)
        factor = downsampling_factor_of(vae)
        if cfg.data.resolution_px % factor:
            raise ConfigError(
                f"data.resolution_px={cfg.data.resolution_px}: not divisible by the downsampling factor "
                f"{factor} of model.init_from={cfg.model.init_from!r}"
            )
        module = KLTrainingModule(
            vae,
            cfg.loss.learn_logvar,
            cfg.loss.logvar_init,
            cfg.model.train_decoder_only,
            cfg.model.deterministic,
        )
    disc = None
    if cfg.loss.disc_weight > 0:
        lecam_decay = cfg.loss.lecam_decay if cfg.loss.lecam_weight > 0 else None  # LeCAM state lives in D
        disc = PatchDiscriminator(
            3, cfg.loss.disc_channels, cfg.loss.disc_layers, cfg.loss.disc_norm, lecam_decay
        )
    return module, disc


def build_optimizer(params: list[torch.nn.Parameter], cfg: AutoencoderTrainConfig) -> torch.optim.AdamW:
    """AdamW with LDM's betas; the learning rate is set every step from `lr_at`."""
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad],
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.adam_betas),
        weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.adam_eps,
    )


# ---------------------------------------------------------------------------------------------------
# The two losses of one step


def generator_loss(
    accelerator: Accelerator,
    out: dict[str, torch.Tensor],
    images: torch.Tensor,
    disc: torch.nn.Module | None,
    last_layer: torch.nn.Parameter,
    lpips: LPIPS | None,
    cfg: AutoencoderTrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NLL + kl_weight * KL or codebook_weight * VQ loss (+ the adaptive-weighted adversarial term when
    `disc` is given), fp32.

    The discriminator is frozen and unsynced here: it only passes gradients on to the reconstruction,
    and none reach its own weights (StyleGAN2-ADA's pattern). `last_layer` is the decoder's output conv
    weight, against which the adaptive weight balances the two gradients (taming, Eq. 7).
    """
    nll, logs = reconstruction_nll(images, out["sample"], out.get("output_logvar"), cfg.loss, lpips)
    if "logvar" in out:  # KL posterior
        kl = kl_loss(out["mean"], out["logvar"], pixels_per_image=images[0].numel())
        loss = nll + cfg.loss.kl_weight * kl
        logs["train/kl_loss"] = kl.detach()
    else:  # VQ: commitment (+ codebook term in gradient mode), already a mean, as taming's
        loss = nll + cfg.loss.codebook_weight * out["vq_loss"]
        logs["train/vq_loss"] = out["vq_loss"].detach()
        logs["codebook/batch_usage"] = (out["usage"] > 0).float().mean()
        logs["codebook/perplexity"] = out["perplexity"].detach()
    if "equivariant_sample" in out:  # EQ-VAE: D(tau(z)) against tau(x)
        equivariance = equivariance_loss(
            out["equivariant_sample"], out["equivariant_target"], cfg.loss.reconstruction
        )
        loss = loss + cfg.loss.equivariance_weight * equivariance
        logs["train/equivariance_loss"] = equivariance.detach()
    if disc is not None:
        disc.requires_grad_(False)
        with accelerator.no_sync(disc):
            g_adv = generator_adversarial_loss(disc(out["sample"]))
        disc.requires_grad_(True)
        weight = adaptive_weight(  # grads all-reduced first, so N processes weigh as 1 process would
            nll,
            g_adv,
            last_layer,
            cfg.loss.adaptive_weight_max,
            reduce_grads=lambda grad: accelerator.reduce(grad, "mean"),
        )
        loss = loss + cfg.loss.disc_weight * weight * g_adv
        logs.update({"train/g_adv_loss": g_adv.detach(), "train/adaptive_weight": weight})
    logs["train/loss"] = loss.detach()
    return loss, logs


def discriminator_loss(
    disc: torch.nn.Module,
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    lecam: torch.nn.Module | None = None,
    lecam_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hinge loss on real images and detached reconstructions, in one forward (BatchNorm/DDP-safe), plus
    lecam_weight * LeCAM when the discriminator carries its averages (`lecam`)."""
    logits_real, logits_fake = disc(torch.cat([images, reconstruction.detach()])).chunk(2)
    loss = hinge_discriminator_loss(logits_real, logits_fake)
    logs = {
        "train/logits_real": logits_real.detach().float().mean(),
        "train/logits_fake": logits_fake.detach().float().mean(),
    }
    if lecam is not None:  # updates the averages (all processes' logits), then regularises against them
        regularizer = lecam(logits_real, logits_fake)
        loss = loss + lecam_weight * regularizer
        logs["train/lecam_loss"] = regularizer.detach()
    logs["train/d_loss"] = loss.detach()
    return loss, logs


@torch.no_grad()
def ema_reconstruction(vae: torch.nn.Module, ema: EMAModel, images: torch.Tensor) -> torch.Tensor:
    """Posterior-mode reconstructions with the EMA weights (what export will hold), then swap back."""
    ema.store(vae.parameters())
    ema.copy_to(vae.parameters())
    try:
        return vae(images.to(next(vae.parameters()).device)).sample.float().cpu()
    finally:
        ema.restore(vae.parameters())


# ---------------------------------------------------------------------------------------------------
# Training


@dataclass
class Session:
    """What `train` and `export_checkpoint` build: the data, the frozen LPIPS and the prepared run."""

    dataset: Dataset
    train_indices: list[int]
    held_out_indices: list[int]
    shards: list[range] | None  # the source's shards, read by `data.order=shards`
    lpips: LPIPS | None
    run: TrainingRun  # models "ae" (KL/VQTrainingModule) and "discriminator"; its EMA follows the autoencoder


def setup(cfg: AutoencoderTrainConfig, for_training: bool = True) -> Session:
    """Build and prepare; restores the state of `train.resume` when set.

    `for_training=False` (export) skips LPIPS, whose weight files an export does not need.
    """
    run_dir = Path(cfg.run_dir)
    resume_from = resume_point(run_dir, cfg.train.resume)
    accelerator = build_accelerator(
        run_dir, cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.use_compile
    )
    if is_sharded(accelerator) and cfg.loss.disc_weight > 0:
        raise ConfigError(
            f"loss.disc_weight={cfg.loss.disc_weight} under FSDP: the discriminator has no ResnetBlock2D "
            "for fsdp.yaml to shard by; train the GAN stage with configs/accelerate/ddp.yaml or set "
            "loss.disc_weight=0"
        )
    torch.manual_seed(cfg.seed)  # weight init: the same on every process
    dataset = build_dataset(
        cfg.data.source,
        cfg.data.resolution_px,
        cfg.data.builtin_samples,
        cfg.seed,
        **source_columns(cfg.data),
    )
    if isinstance(dataset, IndexedImageDataset):  # unreadable samples met while training, for metrics.json
        dataset.record_skips_to(Path(cfg.run_dir) / "skipped.jsonl")
    train_indices, held_out_indices = train_held_out_split(dataset, cfg.data.held_out_samples, cfg.seed)
    shards = stream_shards(dataset, cfg.data.order, cfg.data.source)  # None: global order
    lpips = build_lpips(cfg.loss) if for_training else None
    module, disc = build_models(cfg)

    device, layout = accelerator.device, memory_format(cfg.train.use_channels_last)
    models = {"ae": module.to(device, memory_format=layout)}
    optimizers = {"ae": build_optimizer(list(module.parameters()), cfg)}
    if disc is not None:
        models["discriminator"] = disc.to(device, memory_format=layout)
        optimizers["discriminator"] = build_optimizer(list(disc.parameters()), cfg)
    if lpips is not None:
        lpips.to(device)  # frozen: never prepared, so DDP does not wrap it
    run = start_run(
        accelerator,
        cfg.train,
        run_dir,
        models,
        optimizers,
        ema_target=module.autoencoder,
        resume_from=resume_from,
        grad_clip=cfg.optim.grad_clip,
        samples_name="images",
        divergence_advice="lower optim.lr, use bf16 instead of fp16, or raise loss.disc_start_steps",
    )
    return Session(dataset, train_indices, held_out_indices, shards, lpips, run)


def export_checkpoint(cfg: AutoencoderTrainConfig) -> dict[str, object]:
    """`ldm-vae export`: load the checkpoint `cfg.train.resume` names, export its EMA weights, report."""
    session = setup(cfg, for_training=False)
    run = session.run
    run.ema.copy_to(run.ema_target.parameters())
    extra = {**run.progress.state_dict(), "num_processes": run.accelerator.num_processes}
    return export_and_report(
        cfg, run.ema_target, session.dataset, session.train_indices, session.held_out_indices, extra
    )


def train(cfg: AutoencoderTrainConfig) -> Path:
    """Train, checkpoint, export and report; returns the run folder."""
    session = setup(cfg)
    run, dataset, lpips = session.run, session.dataset, session.lpips
    accelerator, progress, run_dir = run.accelerator, run.progress, run.run_dir
    ae, disc = run.models["ae"], run.models.get("discriminator")
    opt_g, opt_d = run.optimizers["ae"], run.optimizers.get("discriminator")
    autoencoder = run.ema_target  # the diffusers model inside the training wrapper
    device, layout = accelerator.device, memory_format(cfg.train.use_channels_last)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    view = RandomFlipView(dataset, seed=cfg.seed, p=0.5 if cfg.data.random_flip else 0.0)
    loader = run.stream_loader(view, session.train_indices, cfg.seed, cfg.data.num_workers, session.shards)
    batches = iter(loader)
    noise_shape = latent_shape(autoencoder, cfg.data.resolution_px)  # (c, h, w)
    last_layer = autoencoder.decoder.conv_out.weight
    disc_train_start = max(0, cfg.loss.disc_start_steps - cfg.loss.disc_warmup_steps)
    lecam = accelerator.unwrap_model(disc).lecam if disc is not None else None
    last_active: int | None = None  # active latent channels at the last log, for collapse_warning
    with run.tracking() as tracker:
        tracker.info(
            f"{'resuming' if progress.step else 'starting'} at step {progress.step}: "
            f"{len(session.train_indices)} train / {len(session.held_out_indices)} held-out images, "
            f"{accelerator.num_processes} process(es), global batch {run.samples_per_step}"
        )
        if getattr(dataset, "skipped", None):
            tracker.info(dataset.skip_report())
        if accelerator.is_main_process:  # only the main process logs reconstruction grids
            fixed = torch.stack(
                [dataset[i][0] for i in spread_picks(session.held_out_indices, cfg.export.report_samples)]
            )

        while progress.step < cfg.train.max_steps:
            step = progress.step
            set_lr(opt_g, lr_at(step, cfg.optim.lr, cfg.optim, cfg.train.max_steps))
            if opt_d is not None:
                set_lr(opt_d, lr_at(step, cfg.optim.disc_lr or cfg.optim.lr, cfg.optim, cfg.train.max_steps))
            gan_enters = disc is not None and step >= cfg.loss.disc_start_steps
            disc_trains = disc is not None and step >= disc_train_start
            nonfinite = torch.zeros((), device=device)
            transform = None  # EQ-VAE: one scale/rotation per step, keyed by the step
            if cfg.loss.equivariance_weight > 0:
                transform = draw_transform(torch_generator(cfg.seed, "equivariance", step))
            for micro in range(cfg.train.grad_accum_steps):
                images, _ = next(batches)
                images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
                noise = None
                if cfg.model.kind == "kl":  # the posterior draw of each sample, keyed by stream position
                    first = run.first_position(micro)
                    positions = range(first, first + len(images))
                    noise = position_normals(cfg.seed, "ae_noise", positions, noise_shape).to(device)
                with (
                    accelerator.accumulate(ae, *([disc] if disc is not None else [])),
                    run.counting_flops(phase=(gan_enters, disc_trains)),  # the GAN terms add work
                ):
                    # through the DDP wrapper: gradients all-reduce
                    out = ae(images, noise) if transform is None else ae(images, noise, transform)
                    g_loss, logs = generator_loss(
                        accelerator, out, images, disc if gan_enters else None, last_layer, lpips, cfg
                    )
                    accelerator.backward(g_loss)
                    nonfinite += ~torch.isfinite(g_loss.detach())
                    if disc_trains:
                        d_loss, d_logs = discriminator_loss(
                            disc, images, out["sample"], lecam, cfg.loss.lecam_weight
                        )
                        accelerator.backward(d_loss)
                        nonfinite += ~torch.isfinite(d_loss.detach())
                        logs.update(d_logs)
                for key, value in logs.items():
                    run.running.add(key, value)

            updates = {"ae": (ae, opt_g)} | ({"disc": (disc, opt_d)} if disc_trains else {})
            stop_now = run.optimizer_step(nonfinite, updates)

            if run.log_due():
                scalars: dict[str, float] = {}
                if "logvar" in out:
                    kl = kl_per_channel(out["mean"].detach(), out["logvar"].detach())
                    scalars.update({f"latent/kl_channel_{c}": value.item() for c, value in enumerate(kl)})
                    if len(out["mean"]) >= 2:  # active units: the spread of the means over this rank's batch
                        active, _ = active_channels(out["mean"].detach())
                        scalars["latent/active_channels"] = active
                        warning = collapse_warning(last_active, active, len(kl))
                        if warning:
                            tracker.info(f"step {progress.step}: {warning}")
                        last_active = active
                else:  # every quantizer kind: dead codes (+ restarts, LFQ entropies) of the last step
                    scalars.update({f"codebook/{k}": v for k, v in autoencoder.quantize.health().items()})
                run.log(scalars)
            if run.images_due():
                grid = reconstruction_grid(fixed, ema_reconstruction(autoencoder, run.ema, fixed))
                tracker.image("val/reconstructions_ema", grid, progress.step)
            run.checkpoint_if_due(stop_now)

    finish_run(cfg, run, dataset, session.train_indices, session.held_out_indices)
    accelerator.end_training()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """`torchrun -m ldm_vae.train.autoencoder CONFIG [key=value ...]`: the CLI's train-ae."""
    from ldm_vae.train.cli import main as cli_main

    return cli_main(["train-ae", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
