"""eval-ae and its metrics: sharpness, FID (random feature networks only), sample FID, the command itself."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import RandomFeatures, tiny_vae
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

import ldm_vae.train.evaluate
from ldm_vae.data import build_dataset
from ldm_vae.errors import ConfigError
from ldm_vae.losses.perceptual import LPIPS
from ldm_vae.metrics import sharpness
from ldm_vae.metrics.fid import FrechetDistance, load_inception, sample_fid, to_uint8
from ldm_vae.pipelines import LatentDiffusionPipeline
from ldm_vae.train.cli import main


class ChannelMeans(nn.Module):
    """Linear features: the mean uint8 level of each RGB channel, so a uniform shift moves only the mean."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))  # (b, 3)


def _images(b: int = 32, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random images (b, 3, size, size) on the uint8 grid in [-1, 1], levels 20..199 (room to shift)."""
    levels = torch.randint(20, 200, (b, 3, size, size), generator=torch.Generator().manual_seed(seed))
    return levels.float() / 127.5 - 1.0


def _fid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    fid = FrechetDistance(extractor)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return fid.compute()


def _eval_args(model_dir, *extra: str) -> list[str]:
    return [
        "eval-ae",
        f"--model={model_dir}",
        "--data=builtin:shapes",
        "--builtin-samples=8",
        "--batch-size=4",
        "--num-workers=0",
        *extra,
    ]


# ----------------------------------------------------------------------------
# sharpness


def test_sharpness_identity_scaling_blur_and_sharpening():
    x = _images(b=4)
    torch.testing.assert_close(sharpness(x, x.clone()), torch.ones(4), rtol=0, atol=1e-6)
    # The Laplacian is linear: half the contrast is a quarter of the energy.
    torch.testing.assert_close(sharpness(0.5 * x, x), torch.full((4,), 0.25), rtol=1e-5, atol=0)
    blurred = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    sharpened = x + 1.0 * (x - blurred)  # unsharp mask
    assert (sharpness(blurred, x) < 0.5).all()
    assert (sharpness(sharpened, x) > 1.5).all()
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(sharpness(flat, flat - 0.5), torch.ones(2))


# ----------------------------------------------------------------------------
# FID


def test_to_uint8_rounds_like_a_saved_image():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0 / 255, 1.0, 2.0]).view(1, 1, 1, 6)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 128, 255, 255]


def test_fid_identical_is_zero_and_grows_with_a_shift():
    x = _images()
    same = _fid(RandomFeatures(), x, x.clone())
    small = _fid(RandomFeatures(), x, x + 0.1)
    large = _fid(RandomFeatures(), x, x + 0.3)
    assert abs(same) < 1e-4 * small
    assert 0 < small < large


def test_fid_of_a_uniform_shift_with_linear_features_is_the_squared_mean_shift():
    x = _images()
    shifted = x + 20.0 / 255  # +10 uint8 levels in every pixel: covariances equal, means move by 10
    assert _fid(ChannelMeans(), x, shifted) == pytest.approx(3 * 10.0**2, rel=1e-4)


def test_fid_needs_two_images_per_side():
    fid = FrechetDistance(RandomFeatures())
    fid.update(_images(b=1), real=True)
    fid.update(_images(b=3), real=False)
    assert fid.counts == (1, 3)
    with pytest.raises(AssertionError, match="2 real"):
        fid.compute()


def test_load_inception_errors_name_the_option_the_file_and_the_metric(tmp_path):
    missing = tmp_path / "pt_inception.pth"
    with pytest.raises(ConfigError, match=rf"--inception \(needed by rFID\): file not found: {missing}"):
        load_inception(str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=rf"--inception \(needed by rFID\): cannot read {garbage}"):
        load_inception(str(garbage))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ConfigError, match="not the FID Inception state dict") as error:
        load_inception(str(wrong), key="--fid-inception", needed_by="FID")
    assert "--fid-inception (needed by FID)" in str(error.value) and "\n" not in str(error.value)


def test_load_inception_reads_a_local_file_in_the_release_format(tmp_path):
    class Unloaded(FeatureExtractorInceptionV3):
        """torch-fidelity's network with its random init kept: the constructor's load is skipped."""

        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    torch.save({}, tmp_path / "empty.pth")
    random_inception = Unloaded("inception-v3-compat", ["2048"], str(tmp_path / "empty.pth"))
    torch.save(random_inception.state_dict(), tmp_path / "random.pth")
    network = load_inception(str(tmp_path / "random.pth"))
    assert network.num_features == 2048 and not network.training
    image = to_uint8(_images(b=1))
    features = network(image)
    assert features.shape == (1, 2048)
    expected = random_inception(image)[0]  # torch-fidelity's own forward: the same TF1-compatible resize
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# FID of generated samples


class FakePipeline:
    """Records the labels sample_fid asks for; returns random images in [0, 1]."""

    def __init__(self, num_class_embeds: int | None) -> None:
        self.unet = nn.Module()
        self.unet.config = type("Config", (), {"num_class_embeds": num_class_embeds})()
        self.device = torch.device("cpu")
        self.calls: list[tuple[int, list[int] | None]] = []

    def __call__(self, batch_size, class_labels, generator, **kwargs):
        self.calls.append((batch_size, class_labels))
        images = torch.rand(batch_size, 3, 16, 16, generator=generator)
        return type("Output", (), {"images": images})()


@pytest.mark.parametrize("num_class_embeds", [4, None])
def test_sample_fid_balances_classes(num_class_embeds):
    dataset = build_dataset("builtin:shapes", 16, 8, 0)
    pipe = FakePipeline(num_class_embeds)
    result = sample_fid(pipe, dataset, 5, 2, RandomFeatures(), torch.Generator().manual_seed(0))
    assert [size for size, _ in pipe.calls] == [2, 2, 1]
    labels = [labels for _, labels in pipe.calls]
    assert labels == ([[0, 1], [2, 0], [1]] if num_class_embeds else [None, None, None])
    assert result["generated_samples"] == result["real_samples"] == 5 and result["fid"] > 0
    with pytest.raises(ConfigError, match="num_samples=9"):
        sample_fid(pipe, dataset, 9, 2, RandomFeatures(), torch.Generator())


def test_sample_fid_with_a_tiny_pipeline_is_deterministic():
    vae = tiny_vae("kl")
    unet = UNet2DModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=4,
    ).eval()
    pipe = LatentDiffusionPipeline(vae=vae, unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    dataset = build_dataset("builtin:shapes", 16, 8, 0)
    runs = [
        sample_fid(
            pipe, dataset, 4, 2, RandomFeatures(), torch.Generator().manual_seed(seed), num_inference_steps=2
        )
        for seed in (0, 0, 1)
    ]
    assert runs[0] == runs[1] and runs[0]["fid"] > 0 and runs[2]["fid"] != runs[0]["fid"]


# ----------------------------------------------------------------------------
# the eval-ae command


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_eval_ae_without_weights_skips_lpips_and_rfid(tmp_path, kind, capsys):
    model_dir = tmp_path / "export"
    tiny_vae(kind).save_pretrained(model_dir)
    missing = tmp_path / "missing.pth"
    weights = [f"--inception={missing}", f"--lpips-vgg16={missing}", f"--lpips-heads={missing}"]
    assert main(_eval_args(model_dir, *weights)) == 0

    out = tmp_path / "export-eval"  # the default: beside the model folder
    report = json.loads((out / "eval.json").read_text())
    assert report["images"] == 8 and report["resolution_px"] == 16
    assert set(report["metrics"]) == {"psnr_db", "ssim", "sharpness", "bicubic_psnr_db"}
    assert set(report["skipped"]) == {"lpips", "rfid"}
    assert f"--lpips-vgg16 (needed by LPIPS): file not found: {missing}" in report["skipped"]["lpips"]
    assert f"--inception (needed by rFID): file not found: {missing}" in report["skipped"]["rfid"]
    latents = report["latents"]
    assert latents["shape"] == ([4, 8, 8] if kind == "kl" else [3, 8, 8])
    assert ("kl_per_channel" in latents) == (kind == "kl") and ("codebook" in latents) == (kind == "vq")
    markdown = (out / "eval.md").read_text()
    assert "| PSNR |" in markdown and "| rFID |" not in markdown
    assert f"- rfid: --inception (needed by rFID): file not found: {missing}" in markdown
    assert "Skipped:" in capsys.readouterr().out


def test_eval_ae_with_random_weights_reports_lpips_and_rfid(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    tiny_vae("kl").save_pretrained(model_dir)
    lpips = LPIPS(random_init=True)  # written in the file formats LPIPS.from_files reads
    torch.save({f"features.{k}": v for k, v in lpips.features.state_dict().items()}, tmp_path / "vgg16.pth")
    heads = {f"lin{i}.model.1.weight": head.weight for i, head in enumerate(lpips.heads)}
    torch.save(heads, tmp_path / "heads.pth")
    loaded_from = []

    def fake_load_inception(path: str) -> nn.Module:
        loaded_from.append(path)
        return RandomFeatures()

    monkeypatch.setattr(ldm_vae.train.evaluate, "load_inception", fake_load_inception)
    args = _eval_args(
        model_dir,
        "--inception=inception.pth",
        f"--lpips-vgg16={tmp_path / 'vgg16.pth'}",
        f"--lpips-heads={tmp_path / 'heads.pth'}",
        f"--out={tmp_path / 'eval'}",
        "--samples=4",
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert loaded_from == ["inception.pth"] and report["skipped"] == {}
    metrics = report["metrics"]
    assert report["images"] == 4 and metrics["rfid_images"] == 4
    assert metrics["lpips"] > 0 and metrics["rfid"] > 0  # an untrained autoencoder is far from its input
    assert "| rFID |" in (tmp_path / "eval" / "eval.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--samples=1"], "argument --samples: must be >= 2, got 1"),
        (["--resolution=15"], "--resolution=15 must be divisible by the model's downsampling factor 2"),
        (["--data=builtin:nope"], "builtin:nope"),
    ],
)
def test_eval_ae_bad_input_exits_2_with_one_line(tmp_path, capsys, extra, message):
    tiny_vae("kl").save_pretrained(tmp_path / "model")
    assert main(_eval_args(tmp_path / "model", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert main(_eval_args(tmp_path / "nowhere")) == 2
    assert "--model=" in capsys.readouterr().err
