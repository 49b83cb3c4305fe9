"""FLOPs of a step, the measured peak and MFU (ldm_vae.training.flops)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from ldm_vae.training.flops import (
    StepFlops,
    achieved_tflops,
    count_flops,
    measure_peak_tflops,
    model_flops_utilization,
)


def conv_linear_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def train_step(model: nn.Module, batch: int = 2) -> None:
    model(torch.randn(batch, 2, 6, 6)).square().mean().backward()


def test_count_flops_matches_a_hand_count_of_forward_and_backward():
    # conv: 2 x (b*c_out*h*w = 2*4*6*6 outputs) x (c_in*3*3 = 18 MACs) = 10368 FLOPs forward; backward
    # needs only the weight gradient (the input does not require grad): another 10368.
    # linear: 2 x b*in*out = 2*2*144*5 = 2880 forward; backward: input and weight gradients, 2 x 2880.
    # Biases and element-wise ops count zero, as in every MFU figure.
    assert count_flops(lambda: train_step(conv_linear_model())) == 2 * 10368 + 3 * 2880


def test_step_flops_counts_each_phase_once_and_remembers_it():
    model, flops = conv_linear_model(), StepFlops()
    with flops.counting("d_off"):
        train_step(model)
    assert flops.current == 2 * 10368 + 3 * 2880
    with flops.counting("d_off"):  # not counted again: a bigger batch would otherwise double the count
        train_step(model, batch=4)
    assert flops.current == 2 * 10368 + 3 * 2880
    with flops.counting("d_on"):
        train_step(model, batch=4)
    assert flops.current == 2 * (2 * 10368 + 3 * 2880)
    assert set(flops.per_phase) == {"d_off", "d_on"}


def test_step_flops_resumed_from_its_state_dict_does_not_count_again():
    """Counting alters the last bits of a step's gradients: a resumed run must count what the
    uninterrupted one counted, not the first step after the resume."""
    counted = StepFlops()
    with counted.counting("d_off"):
        train_step(conv_linear_model())
    resumed = StepFlops()
    resumed.load_state_dict(counted.state_dict())
    with resumed.counting("d_off"):
        train_step(conv_linear_model(), batch=4)  # would count double if counted
    assert resumed.current == counted.current == 2 * 10368 + 3 * 2880


def test_achieved_tflops_and_mfu_arithmetic():
    assert achieved_tflops(3e12, steps_per_second=0.5) == pytest.approx(1.5)
    assert model_flops_utilization(3e12, steps_per_second=0.5, peak_tflops=6.0) == pytest.approx(0.25)


def test_measured_cpu_peak_is_positive_finite_and_quick():
    start = time.perf_counter()
    peak = measure_peak_tflops("cpu", size=256, seconds=0.1)
    assert math.isfinite(peak) and peak > 0
    assert time.perf_counter() - start < 3
    # the peak's numerator uses the counter's convention (2 n^3 per n x n matmul): MFU compares like with like
    matmul_flops = count_flops(lambda: torch.randn(256, 256) @ torch.randn(256, 256))
    assert matmul_flops == 2 * 256**3


@pytest.mark.slow
def test_train_ae_logs_tflops_and_mfu_with_flops_per_image_fixed_within_each_gan_phase(tmp_path):
    """kl-tiny: steps 0-1 autoencoder only, step 2 the discriminator trains too, from step 3 the adversarial
    term (and its adaptive weight) enters. The counted FLOPs per image only change between those phases."""
    from conftest import tiny_config

    from ldm_vae.train.autoencoder import train
    from ldm_vae.training.tracking import read_stats

    peak = 0.5  # TFLOP/s, given: MFU is then exactly achieved / 0.5
    rows = read_stats(train(tiny_config(tmp_path, f"train.peak_tflops={peak}")))
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        assert row["train/tflops_per_device"] > 0
        assert row["train/mfu"] == pytest.approx(row["train/tflops_per_device"] / peak)
    flops_per_image = [row["train/tflops_per_device"] * 1e12 / row["train/images_per_sec"] for row in rows]
    ae_only, disc_trains, gan = flops_per_image[0], flops_per_image[2], flops_per_image[3]
    assert flops_per_image[1] == pytest.approx(ae_only)
    assert flops_per_image[4:] == pytest.approx([gan, gan])
    assert ae_only < disc_trains < gan
