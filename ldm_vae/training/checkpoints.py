"""Training state on disk: atomic, pruned, portable between process counts, resumable exactly.

`checkpoints/step-0001234/` holds everything `accelerator.save_state` writes (optimizers, grad scaler,
RNG, registered objects such as `Progress` and the EMA), plus each model's weights as
`<name>.safetensors` with unwrapped keys: accelerate would save the DDP wrapper's `module.`-prefixed
keys, and a checkpoint from 8 GPUs would then not load on 1 (or in `ldm-vae export`). Under FSDP the
weights and the EMA are gathered whole first (ldm_vae/training/sharding.py), so a sharded run's
checkpoint resumes on one process too.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from ldm_vae.errors import ConfigError
from ldm_vae.training.sharding import full_state_dict, load_full_state_dict

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{7,})$")


@dataclass
class Progress:
    """The counters of a run; checkpointed, and the only source of the data position on resume."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    samples_seen: int = 0  # global stream position: samples consumed across all processes
    nonfinite_steps: int = 0  # optimizer steps skipped because a loss was not finite
    consecutive_nonfinite: int = 0  # current run of skipped steps
    # data.order=shards: the stream depends on its readers (processes x workers) and the batch size
    shard_readers: int = 0  # 0: global order
    shard_batch_size: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def record_step(self, samples: int, skipped: bool) -> None:
        """One optimizer step done (or skipped for a non-finite loss) after `samples` stream samples."""
        self.step += 1
        self.samples_seen += samples
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if skipped else 0
        self.nonfinite_steps += int(skipped)

    @property
    def healthy(self) -> bool:
        """Not inside a streak of skipped steps: safe to log images or write a checkpoint."""
        return self.consecutive_nonfinite == 0

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a temp folder left by a crash is not one)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`train.resume`: None, "latest" (None when the run has no checkpoint yet) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / "progress.json").is_file() and not any(path.glob("custom_checkpoint_*.pkl")):
        raise ConfigError(f"train.resume={resume!r}: not a checkpoint folder (expected checkpoints/step-*)")
    return path


def resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint a training run starts from; refuses to start over a run that has checkpoints."""
    resume_from = resolve_resume(run_dir, resume)
    if resume_from is None and list_checkpoints(run_dir):
        raise ConfigError(
            f"run_dir={str(run_dir)!r} already holds checkpoints; continue it with train.resume=latest "
            "or choose another run_dir (nothing was changed)"
        )
    return resume_from


def check_resume_batch(progress: Progress, global_micro_batch: int, resume_from: Path | None) -> None:
    """The data stream resumes at `samples_seen`, which must fall on a batch boundary of this run."""
    if progress.samples_seen % global_micro_batch:
        raise ConfigError(
            f"train.resume={str(resume_from)!r}: saved at {progress.samples_seen} samples, not a multiple of "
            f"train.batch_size x processes = {global_micro_batch}; resume with the batch size it was run with"
        )


def _stream_name(readers: int, batch_size: int) -> str:
    return (
        f"data.order=shards with {readers} readers at batch {batch_size}" if readers else "data.order=global"
    )


def check_stream_layout(progress: Progress, shard_readers: int, batch_size: int) -> None:
    """Record the shard-order stream's layout (0 readers: global order); a resume must keep it."""
    layout = (shard_readers, batch_size if shard_readers else 0)
    saved = (progress.shard_readers, progress.shard_batch_size)
    if progress.samples_seen and saved != layout:
        raise ConfigError(
            f"train.resume: the run streamed its data in {_stream_name(*saved)}, now {_stream_name(*layout)} "
            "(readers = processes x max(1, data.num_workers)); the stream would change, so resume with "
            "the same order, processes, data.num_workers and train.batch_size"
        )
    progress.shard_readers, progress.shard_batch_size = layout


class CheckpointManager:
    """Saves and loads the full training state of `models` (name -> prepared model)."""

    def __init__(
        self, accelerator: Accelerator, run_dir: Path, total_limit: int, models: dict[str, nn.Module]
    ):
        self.accelerator = accelerator
        self.folder = run_dir / "checkpoints"
        self.total_limit = total_limit
        self.names = list(models)
        accelerator.register_save_state_pre_hook(self._save_models)
        accelerator.register_load_state_pre_hook(self._load_models)

    def _save_models(self, models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        for name, model in zip(self.names, models, strict=True):
            state = full_state_dict(self.accelerator.unwrap_model(model))  # every rank: FSDP gathers
            if self.accelerator.is_main_process:
                save_file({k: v.contiguous() for k, v in state.items()}, f"{output_dir}/{name}.safetensors")
        weights.clear()  # accelerate must not write the wrapped copies as well

    def _load_models(self, models: list[nn.Module], input_dir: str) -> None:
        for name, model in zip(self.names, models, strict=True):
            state = load_file(f"{input_dir}/{name}.safetensors")
            load_full_state_dict(self.accelerator.unwrap_model(model), state)  # sharded again under FSDP
        models.clear()  # already loaded; accelerate would look for its own file names

    def save(self, progress: Progress) -> Path:
        """Write to a temp folder, then rename: a crash mid-save never leaves a half checkpoint."""
        final = self.folder / checkpoint_name(progress.step)
        temp = self.folder / f".tmp-{final.name}"
        if self.accelerator.is_main_process:
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(temp))  # every rank: per-rank RNG files, collective waits
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (temp / "progress.json").write_text(json.dumps(progress.state_dict(), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            temp.rename(final)
            for old in list_checkpoints(self.folder.parent)[: -self.total_limit]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def load(self, path: Path) -> None:
        self.accelerator.load_state(str(path))
