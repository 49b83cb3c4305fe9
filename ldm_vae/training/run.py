"""The bookkeeping around a job's loop body, shared by both training jobs.

A job builds its models and optimizers, hands them to `start_run`, and then writes its own step top to
bottom (nanoGPT style): micro-batches, forward, backward. Everything after the backward passes is the
same for every job and lives here, in the order it happens:

    stop_now = run.optimizer_step(nonfinite, {"unet": (unet, optimizer)})  # agree, clip, step, EMA, count
    if run.log_due():
        run.log({...job-specific scalars...})                                 # + means, lr, throughput
    if run.images_due():
        run.tracker.image(...)
    run.checkpoint_if_due(stop_now)

`start_run` prepares with accelerate, registers the training state for checkpointing and restores a
resumed run; `run.finish()` writes the last checkpoint and checks that every process holds the same
weights.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ldm_vae.config import TrainConfig
from ldm_vae.data.sampler import stream_loader
from ldm_vae.errors import TrainingDiverged
from ldm_vae.training.accelerator import StopRequest
from ldm_vae.training.checkpoints import (
    CheckpointManager,
    Progress,
    check_resume_batch,
    check_stream_layout,
    resolve_resume,
)
from ldm_vae.training.flops import StepFlops, achieved_tflops, measure_peak_tflops
from ldm_vae.training.replicas import check_replicas
from ldm_vae.training.sharding import PortableEMA, is_sharded
from ldm_vae.training.tracking import RunningMeans, RunTracker


def agree_on_step(
    accelerator: Accelerator, nonfinite: torch.Tensor, stop_requested: bool
) -> tuple[bool, bool]:
    """(skip this step, stop now), decided by one collective for every process: any process with a
    non-finite loss makes all skip, any process with a stop signal makes all stop."""
    flags = torch.stack([nonfinite.float(), torch.tensor(float(stop_requested), device=nonfinite.device)])
    skip, stop = (accelerator.reduce(flags, "sum") > 0).tolist()
    return skip, stop


@dataclass
class TrainingRun:
    """A prepared run: its models and optimizers (by name), EMA, counters, checkpoints and tracker."""

    accelerator: Accelerator
    train: TrainConfig
    run_dir: Path
    models: dict[str, nn.Module]  # prepared (DDP-wrapped when distributed)
    optimizers: dict[str, torch.optim.Optimizer]  # prepared
    ema: EMAModel
    ema_target: nn.Module  # the unwrapped model whose parameters the EMA follows (and export holds)
    progress: Progress
    checkpoints: CheckpointManager
    grad_clip: float  # 0 = no clipping (the norm is still logged)
    samples_name: str  # "images" or "latents": names the throughput scalar
    divergence_advice: str  # what to try when the run stops on non-finite losses
    peak_tflops: float  # the device's dense matmul peak, MFU's unit (train.peak_tflops or measured at start)
    flops: StepFlops  # FLOPs of one micro-batch, counted once per phase (checkpointed)
    running: RunningMeans = field(default_factory=RunningMeans)  # job scalars since the last log
    grad_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # of the last applied step
    tracker: RunTracker | None = None  # set by `tracking()`
    stop: StopRequest | None = None

    @property
    def sharded(self) -> bool:
        """FSDP: the main process cannot run a model alone, so no image grids and no export in the run."""
        return is_sharded(self.accelerator)

    @property
    def samples_per_step(self) -> int:
        """Global samples one optimizer step consumes: batch x processes x accumulation."""
        return self.train.batch_size * self.accelerator.num_processes * self.train.grad_accum_steps

    def first_position(self, micro: int) -> int:
        """Global stream position of this process's first sample in micro-batch `micro` of this step."""
        global_micro_batch = self.train.batch_size * self.accelerator.num_processes
        return (
            self.progress.samples_seen
            + micro * global_micro_batch
            + self.accelerator.process_index * self.train.batch_size
        )

    def counting_flops(self, phase: Hashable = None) -> AbstractContextManager[None]:
        """Wrap one micro-batch's forward and backward: its FLOPs are counted on the first micro-batch of
        each `phase` (whatever changes the work of a step) and give the logged TFLOP/s and MFU."""
        return self.flops.counting(phase)

    def stream_loader(
        self,
        dataset: Dataset,
        indices: Sequence[int],
        seed: int,
        num_workers: int,
        shards: Sequence[range] | None = None,
    ) -> DataLoader:
        """This process's slice of the global stream over `indices`, from where the run stands; in shard
        order with `shards` (the source's shard ranges), whose layout a resume must keep."""
        readers = self.accelerator.num_processes * max(1, num_workers) if shards is not None else 0
        check_stream_layout(self.progress, readers, self.train.batch_size)
        return stream_loader(
            dataset,
            indices,
            self.train.batch_size,
            self.accelerator.process_index,
            self.accelerator.num_processes,
            seed,
            self.progress.samples_seen,
            num_workers,
            shards,
        )

    @contextmanager
    def tracking(self) -> Iterator[RunTracker]:
        """The tracker and the Ctrl-C/SIGTERM handler for the loop; both released however the loop ends."""
        self.tracker = RunTracker(self.accelerator, self.run_dir, self.train.max_steps, self.progress.step)
        self.stop = StopRequest()
        try:
            yield self.tracker
        finally:
            self.stop.restore()
            self.tracker.close()

    def optimizer_step(
        self, nonfinite: torch.Tensor, updates: dict[str, tuple[nn.Module, torch.optim.Optimizer]]
    ) -> bool:
        """After a step's micro-batches: agree on skip/stop, clip and step each (model, optimizer) in
        `updates` (one at a time, so fp16 unscales each once), update the EMA, zero every optimizer and
        count the step. Returns whether the run was asked to stop."""
        assert self.accelerator.sync_gradients, "the last micro-batch of a step must synchronise gradients"
        skip, stop_now = agree_on_step(self.accelerator, nonfinite, self.stop.requested)
        if not skip:
            for name, (model, optimizer) in updates.items():
                norm = self.accelerator.clip_grad_norm_(model.parameters(), self.grad_clip or float("inf"))
                self.grad_norms[f"train/grad_norm_{name}"] = norm
                optimizer.step()
            self.ema.step(self.ema_target.parameters())
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self._count_step(skip)
        return stop_now

    def _count_step(self, skipped: bool) -> None:
        """Report a skipped (non-finite) step; after `train.max_nonfinite_steps` in a row raise
        `TrainingDiverged` naming the last good checkpoint."""
        self.progress.record_step(self.samples_per_step, skipped)
        if skipped:
            self.tracker.info(
                f"step {self.progress.step - 1}: non-finite loss, step skipped "
                f"({self.progress.nonfinite_steps} so far)"
            )
            if self.progress.consecutive_nonfinite >= self.train.max_nonfinite_steps:
                last_good = resolve_resume(self.run_dir, "latest")
                raise TrainingDiverged(
                    f"stopped at step {self.progress.step} after {self.progress.consecutive_nonfinite} "
                    f"non-finite losses in a row (train.max_nonfinite_steps); last good checkpoint: "
                    f"{last_good}; {self.divergence_advice}"
                )
        self.tracker.advance()

    def log_due(self) -> bool:
        step = self.progress.step
        return step % self.train.log_every_steps == 0 or step == self.train.max_steps

    def log(self, scalars: dict[str, float]) -> None:
        """Write the means since the last log, the last step's grad norms, lr, throughput and skip count,
        plus the job's own `scalars`, to TensorBoard, stats.jsonl and the progress bar."""
        values = self.running.pop_means()
        values.update({key: float(norm) for key, norm in self.grad_norms.items()})
        first_optimizer = next(iter(self.optimizers.values()))
        values["train/lr"] = first_optimizer.param_groups[0]["lr"]
        rate = self.tracker.samples_per_second(self.progress.step, self.samples_per_step)
        values[f"train/{self.samples_name}_per_sec"] = rate
        if self.flops.current is not None:  # per device: this process's FLOPs over the step time
            flops_per_step = self.flops.current * self.train.grad_accum_steps
            values["train/tflops_per_device"] = achieved_tflops(flops_per_step, rate / self.samples_per_step)
            values["train/mfu"] = values["train/tflops_per_device"] / self.peak_tflops
        values["train/nonfinite_steps"] = self.progress.nonfinite_steps
        values.update(scalars)
        self.tracker.scalars(self.progress.step, values)
        self.tracker.postfix(values, self.samples_name)

    def images_due(self) -> bool:
        """Image grids: main process only, never inside a streak of skipped steps, never sharded."""
        return (
            not self.sharded
            and self.progress.healthy
            and self.accelerator.is_main_process
            and self.progress.step % self.train.image_every_steps == 0
        )

    def checkpoint_if_due(self, stop_now: bool) -> None:
        """Checkpoint every `train.checkpoint_every_steps` healthy steps; when the run was asked to stop,
        checkpoint and raise KeyboardInterrupt (every process, after the same step)."""
        if (
            self.progress.healthy and self.progress.step % self.train.checkpoint_every_steps == 0
        ) or stop_now:
            self.tracker.info(f"step {self.progress.step}: checkpoint {self.checkpoints.save(self.progress)}")
        if stop_now:
            self.tracker.info(f"interrupted at step {self.progress.step}; continue with train.resume=latest")
            raise KeyboardInterrupt

    def finish(self) -> dict[str, object]:
        """On every process after the loop: the last checkpoint (if the loop did not just write it) and
        the replica check. Returns the run's counters and the replica digests for the report."""
        if self.progress.step % self.train.checkpoint_every_steps:
            self.checkpoints.save(self.progress)
        counters = {**self.progress.state_dict(), "num_processes": self.accelerator.num_processes}
        if self.sharded:  # each process holds other shards by design: nothing to compare
            self.tracker.info(
                f"sharded (FSDP) run: export it on one process with `ldm-vae export {self.run_dir}`"
            )
            return counters
        replicas = check_replicas(self.accelerator, list(self.models.values()))
        if not replicas["replicas_identical"]:
            self.tracker.info(f"WARNING: processes hold different weights after training: {replicas}")
        return {**counters, **replicas}


def start_run(
    accelerator: Accelerator,
    train: TrainConfig,
    run_dir: Path,
    models: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    ema_target: nn.Module,
    resume_from: Path | None,
    grad_clip: float,
    samples_name: str,
    divergence_advice: str,
) -> TrainingRun:
    """Prepare `models` and `optimizers` (moved to the device by the caller), make the EMA of
    `ema_target`, register the training state for checkpointing and restore `resume_from`.

    Models are prepared in the order given; a checkpoint holds each as `<name>.safetensors`.
    `ema_target` (a diffusers model) also gets `train.gradient_checkpointing`.
    """
    if train.gradient_checkpointing:
        ema_target.enable_gradient_checkpointing()
    prepared = accelerator.prepare(*models.values(), *optimizers.values())
    if len(models) + len(optimizers) == 1:
        prepared = (prepared,)
    # after prepare: under FSDP the EMA then averages this process's shards, as the optimizer does
    ema = PortableEMA(ema_target.parameters(), decay=train.ema_decay)
    prepared_models = dict(zip(models, prepared[: len(models)], strict=True))
    prepared_optimizers = dict(zip(optimizers, prepared[len(models) :], strict=True))

    progress, flops = Progress(), StepFlops()
    accelerator.register_for_checkpointing(progress)
    accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(flops)  # a resumed run recounts no phase: same numerics
    checkpoints = CheckpointManager(accelerator, run_dir, train.checkpoint_total_limit, prepared_models)
    if resume_from is not None:
        checkpoints.load(resume_from)
    check_resume_batch(progress, train.batch_size * accelerator.num_processes, resume_from)
    return TrainingRun(
        accelerator=accelerator,
        train=train,
        run_dir=run_dir,
        models=prepared_models,
        optimizers=prepared_optimizers,
        ema=ema,
        ema_target=ema_target,
        progress=progress,
        checkpoints=checkpoints,
        grad_clip=grad_clip,
        samples_name=samples_name,
        divergence_advice=divergence_advice,
        peak_tflops=train.peak_tflops or measure_peak_tflops(accelerator.device),
        flops=flops,
    )
