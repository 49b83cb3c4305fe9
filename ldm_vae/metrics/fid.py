"""Fréchet Inception Distance: reconstructions vs originals (rFID) and generated samples vs data.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (NeurIPS
2017), Eq. 6: FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) over 2048-d pool3 features of the
TF Inception graph `inception-2015-12-05`. The statistics and distance are torchmetrics'
`FrechetInceptionDistance` (fp64 sums); the network is torch-fidelity's port of that graph, with its
TF1-compatible bilinear resize to 299 px (`antialias=False`), so values compare with torch-fidelity and
pytorch-fid. FID is biased upward at small sample counts (Chong & Forsyth, CVPR 2020): compare numbers only at
equal counts, and report the count next to the value.

The weights are never downloaded: `load_inception` reads a local file, pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (torch-fidelity ships the same file, hash prefix included, as
`weights-inception-2015-12-05-6726825d.pth`). Any module mapping uint8 images (b, 3, H, W) to features (b, d)
can stand in for it, e.g. a random network in tests.
"""

from __future__ import annotations

import os

import torch
from diffusers import DiffusionPipeline
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

from ldm_vae.errors import ConfigError
from ldm_vae.losses.perceptual import _load_state, _require_file

INCEPTION_FILENAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FEATURES = 2048  # pool3
INCEPTION_HINT = (
    f"it is the FID Inception file {INCEPTION_FILENAMES[0]} (pytorch-fid's release; torch-fidelity's "
    f"{INCEPTION_FILENAMES[1]} is the same file), normally in ~/.cache/torch/hub/checkpoints/"
)


def default_inception_path() -> str:
    """The FID Inception file in torch's hub cache (honours $TORCH_HOME), under either release name."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    paths = [os.path.join(folder, name) for name in INCEPTION_FILENAMES]
    return next((path for path in paths if os.path.isfile(path)), paths[0])


def load_inception(path: str, key: str = "--inception", needed_by: str = "rFID") -> nn.Module:
    """The FID Inception network (uint8 (b, 3, H, W) -> (b, 2048)) from a local file, in eval mode.

    Errors are one line naming `key`, the file and `needed_by` (the metrics that cannot run without it).
    """
    label = f"{key} (needed by {needed_by})"
    _require_file(str(path), label, INCEPTION_HINT)
    _load_state(str(path), label, INCEPTION_HINT)  # weights_only: torch-fidelity's own load unpickles freely
    try:
        network = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(INCEPTION_FEATURES)],
            feature_extractor_weights_path=str(path),
            antialias=False,
        )
    except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped keys
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"{label}: {path} is not the FID Inception state dict ({first_line})") from None
    network.num_features = INCEPTION_FEATURES  # spares torchmetrics a probe forward at 299 px
    return network


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float (b, 3, H, W) -> uint8 [0, 255], rounded, as the images would be saved to disk."""
    return ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------
# main class


class FrechetDistance:
    """Accumulates features of real and fake images in [-1, 1]; `compute()` gives the Fréchet distance.

    `extractor` maps uint8 images (b, 3, H, W) to features (b, d); give it a `num_features` attribute to spare
    torchmetrics a probe forward. It moves to `device` with the statistics.
    """

    def __init__(self, extractor: nn.Module, device: torch.device | str = "cpu") -> None:
        self.metric = FrechetInceptionDistance(feature=extractor, normalize=False).to(device)

    def update(self, images: Tensor, real: bool) -> None:
        """Add images (b, 3, H, W) in [-1, 1] to the real or the fake set."""
        self.metric.update(to_uint8(images).to(self.metric.device), real=real)

    @property
    def counts(self) -> tuple[int, int]:
        """(real, fake) images seen so far."""
        return int(self.metric.real_features_num_samples), int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        """FID of the fake set to the real set; both need at least 2 images."""
        real, fake = self.counts
        assert real >= 2 and fake >= 2, f"FID needs >= 2 real and >= 2 fake images, got {real} and {fake}"
        return float(self.metric.compute())


@torch.no_grad()
def sample_fid(
    pipeline: DiffusionPipeline,
    dataset: Dataset,
    num_samples: int,
    batch_size: int,
    extractor: nn.Module,
    generator: torch.Generator,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    class_balanced: bool = True,
    seed: int = 0,
) -> dict[str, float | int]:
    """FID of `num_samples` images from a LatentDiffusionPipeline against as many random dataset images.

    A class-conditional pipeline gets labels 0, 1, ..., k-1, 0, 1, ... (`class_balanced`), else the random
    labels the pipeline draws from `generator`. The real images are a `seed`-ed random subset of `dataset`
    (an image folder is listed class by class, so its first images would be one class).
    """
    if num_samples < 2 or num_samples > len(dataset):
        raise ConfigError(f"num_samples={num_samples}: FID needs 2 to {len(dataset)} (the dataset's size)")
    fid = FrechetDistance(extractor, pipeline.device)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_samples]
    for start in range(0, num_samples, batch_size):
        fid.update(torch.stack([dataset[int(i)][0] for i in order[start : start + batch_size]]), real=True)

    num_class_embeds = pipeline.unet.config.num_class_embeds
    num_classes = None if num_class_embeds is None else num_class_embeds - 1  # the last id is the null class
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        labels = None
        if num_classes is not None and class_balanced:
            labels = [i % num_classes for i in range(start, start + count)]
        images = pipeline(
            batch_size=count,
            class_labels=labels,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        ).images  # (b, 3, H, W) in [0, 1]
        fid.update(images * 2.0 - 1.0, real=False)
    return {
        "fid": fid.compute(),
        "generated_samples": num_samples,
        "real_samples": num_samples,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
    }
