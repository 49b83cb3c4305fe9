"""What a run tells its user (main process only): a tqdm bar, log.txt, stats.jsonl and TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm


class RunTracker:
    def __init__(self, accelerator: Accelerator, run_dir: Path, total_steps: int, start_step: int):
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.run_dir = run_dir
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not self.is_main, unit="step")
        self._rate_time, self._rate_step = time.perf_counter(), start_step
        if self.is_main:
            accelerator.init_trackers("train")
            self._forget_rows_after(start_step)

    def _forget_rows_after(self, step: int) -> None:
        """On resume, rows logged after the checkpoint will be logged again: drop the old ones."""
        rows = [row for row in read_stats(self.run_dir) if row["step"] <= step]
        if (self.run_dir / "stats.jsonl").is_file():
            (self.run_dir / "stats.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    def info(self, message: str) -> None:
        """One line to the terminal (without breaking the bar) and to log.txt."""
        if self.is_main:
            self.bar.write(message)
            with open(self.run_dir / "log.txt", "a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def advance(self) -> None:
        self.bar.update(1)

    def samples_per_second(self, step: int, samples_per_step: int) -> float:
        """Throughput since the previous call (or since the tracker started)."""
        now = time.perf_counter()
        rate = (step - self._rate_step) * samples_per_step / max(now - self._rate_time, 1e-9)
        self._rate_time, self._rate_step = now, step
        return rate

    def postfix(self, values: dict[str, float], samples_name: str) -> None:
        """Loss, throughput and MFU of the last log on the bar: `loss=0.0312, images/s=412, mfu=38%`."""
        shown = {"loss": f"{values['train/loss']:.4f}"}
        shown[f"{samples_name}/s"] = f"{values[f'train/{samples_name}_per_sec']:.3g}"
        if "train/mfu" in values:
            shown["mfu"] = f"{100 * values['train/mfu']:.1f}%"
        self.bar.set_postfix(shown)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.is_main:
            self.accelerator.log(values, step=step)
            with open(self.run_dir / "stats.jsonl", "a") as stats:
                stats.write(json.dumps({"step": step, **values}) + "\n")

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """image (3, H, W) in [0, 1]."""
        if self.is_main:
            self.accelerator.get_tracker("tensorboard").log_images(
                {tag: image[None]}, step, dataformats="NCHW"
            )

    def close(self) -> None:
        self.bar.close()


def read_stats(run_dir: Path) -> list[dict]:
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunningMeans:
    """Sums and counts of logged values between two log steps; some terms exist only on some steps."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[torch.Tensor, torch.Tensor | int]] = {}

    def add(self, key: str, total: torch.Tensor, count: torch.Tensor | int = 1) -> None:
        """Add `total` over `count` items (one value by default) to the mean of `key`."""
        previous, n = self.sums.get(key, (0.0, 0))
        self.sums[key] = (previous + total.float(), n + count)

    def pop_means(self) -> dict[str, float]:
        """The means since the last call (keys with no items are left out), and start over."""
        means = {key: (total / count).item() for key, (total, count) in self.sums.items() if count > 0}
        self.sums = {}
        return means
