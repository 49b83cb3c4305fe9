"""How close a training step runs to the hardware: FLOPs per step, the measured peak, and MFU.

Model FLOP utilisation (PaLM, Chowdhery et al. 2022, Appendix B) = FLOPs the step needs / step time /
the device's peak FLOP/s. The numerator is counted, not estimated: `torch.utils.flop_counter.FlopCounterMode`
records every matmul, convolution and attention torch dispatches while one real step (forward and backward)
runs, with the real models and batch shapes. Element-wise work (norms, activations, the optimizer) counts
zero, as in every published MFU figure. The denominator is measured in the same process with a large dense
matmul (bf16 on CUDA, fp32 on CPU), so MFU is against what this device reaches, not its datasheet; a
datasheet figure can be given instead (`train.peak_tflops`).

All figures are per process (per device): under DDP each process runs the same step on its own data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

# A square matmul big enough to reach the device's dense peak, small enough to run in well under a second.
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}
PEAK_MATMUL_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs torch dispatches while `step()` runs; forward and backward both when it calls backward.

    Works on eager and `torch.compile`d models alike (a compiled module runs its ops eagerly while the
    counter is active).
    """
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class StepFlops:
    """FLOPs of one optimizer step, counted on the first step of each phase and remembered.

    A phase is whatever changes the work of a step: train-ae's discriminator joins after
    `disc_start_steps`, so its steps get more expensive; train-ldm has one phase. Wrap the work to count
    (the jobs: one micro-batch's forward and backward) in `counting(phase)`: the first time in a phase the
    counter runs (a few percent slower, once), afterwards it costs nothing.

    Counting changes a step's gradients in the last bits (torch dispatches some backward kernels
    differently under the counter), so the counts are checkpointed: a resumed run counts exactly the
    steps the uninterrupted run counted, and ends with the same weights.
    """

    def __init__(self) -> None:
        self.per_phase: dict[Hashable, int] = {}
        self.current: int | None = None  # FLOPs of the phase of the last step; None before the first

    def state_dict(self) -> dict[str, list]:
        return {"per_phase": list(self.per_phase.items())}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.per_phase = dict(state["per_phase"])

    @contextmanager
    def counting(self, phase: Hashable = None) -> Iterator[None]:
        if phase in self.per_phase:
            yield
        else:
            with FlopCounterMode(display=False) as counter:
                yield
            self.per_phase[phase] = counter.get_total_flops()
        self.current = self.per_phase[phase]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_peak_tflops(
    device: torch.device | str,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    seconds: float = 0.3,
) -> float:
    """The dense matmul TFLOP/s this process reaches on `device`: the best of repeated timed batches of
    (size x size) @ (size x size) products over about `seconds`. Defaults: bf16 8192^2 on CUDA, fp32
    1024^2 on CPU (what the training step's matmuls and convolutions run in)."""
    device = torch.device(device)
    size = size or PEAK_MATMUL_SIZE.get(device.type, PEAK_MATMUL_SIZE["cpu"])
    dtype = dtype or PEAK_MATMUL_DTYPE.get(device.type, torch.float32)
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    flops_per_matmul = 2 * size**3
    torch.mm(a, b)  # warm-up: kernel selection, clocks up
    _synchronize(device)
    best, repeats, deadline = 0.0, 1, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _synchronize(device)
        elapsed = time.perf_counter() - start
        best = max(best, repeats * flops_per_matmul / elapsed / 1e12)
        if time.perf_counter() >= deadline:
            return best
        if elapsed < 0.02:  # too short to time well: batch more matmuls per measurement
            repeats *= 2


def achieved_tflops(flops_per_step: int, steps_per_second: float) -> float:
    """TFLOP/s a process sustains running `steps_per_second` steps of `flops_per_step` each."""
    return flops_per_step * steps_per_second / 1e12


def model_flops_utilization(flops_per_step: int, steps_per_second: float, peak_tflops: float) -> float:
    """The fraction of `peak_tflops` the counted FLOPs use; in (0, 1] unless the peak is understated."""
    return achieved_tflops(flops_per_step, steps_per_second) / peak_tflops
