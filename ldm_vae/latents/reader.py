"""Latent store, reading side: random access into the shards `ldm-vae encode` wrote, for training a latent
diffusion model (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models").

A KL store keeps the posterior moments, not a sample, so every read draws a fresh z = mean + std * eps
(the reparameterisation of Kingma & Welling 2014, eq. 10): the diffusion model sees the whole posterior, as
when it encodes images on the fly. Latents are then normalised to roughly unit variance with the statistics
the encode stage measured (LDM Sec. 4.3.2 and App. D.1, "rescaling by the component-wise standard deviation").

Shards are memory-mapped and opened lazily, once per process, so DataLoader workers each hold their own
handles and one row costs one small read, whatever the shard size.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

from ldm_vae.errors import ConfigError

FORMAT = "ldm-vae-latents/1"  # the writer's `FORMAT`; repeated so the reader does not import diffusers
STORAGE_DTYPES = ("float16", "bfloat16", "float32")
KINDS = ("kl", "vq")
MODES = ("sample", "mean")
NORMALIZATIONS = ("scale", "shift_scale", "per_channel", "none")
REQUIRED_KEYS = (
    "kind",
    "latent_shape",
    "storage_dtype",
    "num_samples",
    "flip",
    "classes",
    "shards",
    "scaling",
)

# ---------------------------------------------------------------------------------------------------------
# helpers


def read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json, checked for the keys the reader relies on, so a bad store fails before training."""
    path = root / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no latent manifest here; run `ldm-vae encode` to write one")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); re-run `ldm-vae encode`") from error
    if not isinstance(manifest, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: format={manifest.get('format')!r}, expected {FORMAT!r}")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}; re-run `ldm-vae encode`")
    if manifest["kind"] not in KINDS:
        raise ConfigError(f"{path}: kind={manifest['kind']!r}, expected one of {KINDS}")
    if manifest["storage_dtype"] not in STORAGE_DTYPES:
        raise ConfigError(
            f"{path}: storage_dtype={manifest['storage_dtype']!r}, expected one of {STORAGE_DTYPES}"
        )
    if len(manifest["latent_shape"]) != 3:
        raise ConfigError(f"{path}: latent_shape={manifest['latent_shape']}, expected [c, h, w]")
    shards = manifest["shards"]
    if not (
        isinstance(shards, list)
        and all(isinstance(s, dict) and {"file", "count"} <= s.keys() for s in shards)
    ):
        raise ConfigError(f"{path}: shards must be a list of {{'file': ..., 'count': ...}} objects")
    total = sum(int(shard["count"]) for shard in shards)
    if total != manifest["num_samples"]:
        raise ConfigError(f"{path}: shard counts sum to {total}, but num_samples={manifest['num_samples']}")
    return manifest


def normalization_tensors(
    scaling: dict[str, Any], normalization: str, channels: int, manifest_path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (c, 1, 1) float32, with z_model = (z - shift) * scale for every convention."""
    scale, shift = torch.ones(channels, 1, 1), torch.zeros(channels, 1, 1)
    needed = {
        "scale": ["scaling_factor"],
        "shift_scale": ["scaling_factor", "mean"],
        "per_channel": ["per_channel_mean", "per_channel_std"],
        "none": [],
    }[normalization]
    missing = [key for key in needed if key not in scaling]
    if missing:
        raise ConfigError(
            f"{manifest_path}: normalization={normalization!r} needs scaling keys {missing}; "
            "re-run `ldm-vae encode` or use normalization='none'"
        )
    if normalization in ("scale", "shift_scale"):
        factor = float(scaling["scaling_factor"])
        if not (factor > 0 and factor != float("inf")):
            raise ConfigError(f"{manifest_path}: scaling.scaling_factor={factor} must be finite and > 0")
        scale = torch.full((channels, 1, 1), factor)
        if normalization == "shift_scale":
            shift = torch.full((channels, 1, 1), float(scaling["mean"]))
    elif normalization == "per_channel":
        means, stds = scaling["per_channel_mean"], scaling["per_channel_std"]
        if len(means) != channels or len(stds) != channels or min(stds) <= 0:
            raise ConfigError(
                f"{manifest_path}: scaling.per_channel_mean/std must hold {channels} values with std > 0, "
                f"got {means} / {stds}; use normalization='scale' instead"
            )
        scale = (1.0 / torch.tensor(stds, dtype=torch.float64)).float().view(channels, 1, 1)  # 1/std in fp64
        shift = torch.tensor(means, dtype=torch.float32).view(channels, 1, 1)
    return scale, shift


# ---------------------------------------------------------------------------------------------------------
# main class


class LatentDataset(Dataset):
    """(z_model (c, h, w) float32, label) per sample of a latent store, in the writer's global order;
    (z_model, label, caption) with `captions=True`.

    mode: "sample" draws z from the KL posterior on every read (fresh torch.randn, so DataLoader worker
    seeding applies); "mean" returns its mean. A VQ store holds deterministic pre-quantisation latents, so
    mode does not apply to it; the code ids are read with `indices(i)`.
    normalization: "scale" z * scaling_factor (LDM, SD); "shift_scale" (z - mean) * scaling_factor (SD3,
    FLUX's shift_factor); "per_channel" (z - mean[c]) / std[c]; "none" z. `scale_and_shift()` inverts any.
    flip_probability: chance of returning the stored horizontally flipped sample instead.
    captions: also return each sample's caption (a store encoded from a dataset with captions).

    Example:
        >>> data = LatentDataset("runs/latents", mode="sample")
        >>> z, label = data[0]                                  # (c, h, w) float32, int
        >>> scale, shift = data.scale_and_shift()               # (c, 1, 1) each
        >>> z_raw = z / scale + shift                           # what the autoencoder decodes
    """

    def __init__(
        self,
        root: str | Path,
        mode: Literal["sample", "mean"] = "sample",
        normalization: Literal["scale", "shift_scale", "per_channel", "none"] = "scale",
        flip_probability: float = 0.0,
        captions: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r}, expected one of {MODES}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization={normalization!r}, expected one of {NORMALIZATIONS}")
        if not 0.0 <= flip_probability <= 1.0:
            raise ConfigError(f"flip_probability={flip_probability} must lie in [0, 1]")
        self._manifest = read_manifest(self.root)
        manifest_path = self.root / "manifest.json"
        if flip_probability > 0 and not self._manifest["flip"]:
            raise ConfigError(
                f"flip_probability={flip_probability}, but {manifest_path} has no flipped latents "
                "(flip: false); use flip_probability=0 or re-encode with flips"
            )
        if captions and not self._manifest.get("captions"):
            raise ConfigError(
                f"{manifest_path} holds no captions: encode a dataset that has them (builtin:shapes, a "
                "folder with .txt or metadata.jsonl captions, hf: or wds: with a caption column)"
            )
        self.mode = mode
        self.normalization = normalization
        self.flip_probability = float(flip_probability)
        self.captions = captions

        # Existence only: handles are opened lazily, in the process that reads (see `_handle`).
        self._paths = [self.root / shard["file"] for shard in self._manifest["shards"]]
        for path in self._paths:
            if not path.is_file():
                raise ConfigError(
                    f"{path}: shard listed in {manifest_path} is missing; re-run `ldm-vae encode`"
                )
        counts = [int(shard["count"]) for shard in self._manifest["shards"]]
        self._ends = list(itertools.accumulate(counts))  # global index one past each shard's last row
        self._starts = [end - count for end, count in zip(self._ends, counts, strict=True)]

        c = self.latent_shape[0]
        self._scale, self._shift = normalization_tensors(
            self._manifest["scaling"], normalization, c, manifest_path
        )
        self._handles: dict[int, safe_open] = {}
        self._pid = os.getpid()

    # --- pickling: DataLoader workers (spawn/forkserver) get the object without open handles

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    # --- metadata

    def __len__(self) -> int:
        return int(self._manifest["num_samples"])

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed manifest.json; shared, so treat it as read-only."""
        return self._manifest

    @property
    def kind(self) -> Literal["kl", "vq"]:
        return self._manifest["kind"]

    @property
    def classes(self) -> list[str]:
        return list(self._manifest["classes"])

    @property
    def num_classes(self) -> int:
        return len(self._manifest["classes"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = (int(n) for n in self._manifest["latent_shape"])
        return c, h, w

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), (c, 1, 1) float32 each: z_model = (z - shift) * scale, for a pipeline to invert."""
        return self._scale.clone(), self._shift.clone()

    # --- reading

    def _locate(self, index: int) -> tuple[int, int]:
        """Global index (negative counts from the end) -> (shard, row)."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} latent samples in {self.root}")
        shard = bisect.bisect_right(self._ends, index)
        return shard, index - self._starts[shard]

    def _handle(self, shard: int) -> safe_open:
        """This process's memory-mapped handle; a forked worker drops its parent's and opens its own."""
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(self._paths[shard], framework="pt")
        return self._handles[shard]

    def _read(self, shard: int, row: int, key: str) -> torch.Tensor:
        """One row of one tensor, (1, ...), without loading the shard."""
        try:
            return self._handle(shard).get_slice(key)[row : row + 1]
        except SafetensorError as error:
            raise ConfigError(
                f"{self._paths[shard]}: cannot read {key!r} ({error}); re-run `ldm-vae encode`"
            ) from error

    def _latent(self, shard: int, row: int, use_flip: bool) -> torch.Tensor:
        """Unnormalised z (c, h, w) float32: a posterior draw or mean (KL), the stored latents (VQ)."""
        suffix = "_flip" if use_flip else ""
        if self.kind == "vq":
            z = self._read(shard, row, "latents" + suffix)[0].float()  # (c, h, w)
        else:
            z = self._read(shard, row, "mean" + suffix)[0].float()  # (c, h, w)
            if self.mode == "sample":
                logvar = self._read(shard, row, "logvar" + suffix)[0].float()  # fp32 before exp
                z = z + torch.exp(0.5 * logvar) * torch.randn_like(z)  # reparameterisation
        if tuple(z.shape) != self.latent_shape:
            raise ConfigError(
                f"{self._paths[shard]}: row of shape {tuple(z.shape)}, "
                f"but the manifest says latent_shape={list(self.latent_shape)}"
            )
        return z

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, str]:
        shard, row = self._locate(index)
        # torch's RNG, not random/numpy: DataLoader reseeds it per worker, so workers draw different flips.
        use_flip = self.flip_probability > 0 and torch.rand(()).item() < self.flip_probability
        z = self._latent(shard, row, use_flip)  # (c, h, w)
        label = int(self._read(shard, row, "labels")[0])
        if self.captions:
            return (z - self._shift) * self._scale, label, self._caption(shard, row)
        return (z - self._shift) * self._scale, label

    def _caption(self, shard: int, row: int) -> str:
        """The writer's zero-padded UTF-8 row (`caption_rows`) back to text."""
        return bytes(self._read(shard, row, "captions")[0].tolist()).rstrip(b"\0").decode("utf-8")

    def caption(self, index: int) -> str:
        """The caption of sample `index` ("" where its image had none)."""
        if not self._manifest.get("captions"):
            raise ConfigError(f"caption(): {self.root} holds no captions")
        return self._caption(*self._locate(index))

    def indices(self, index: int, flipped: bool = False) -> torch.Tensor:
        """VQ code ids (h, w) int64 of sample `index`, of its flipped image if `flipped`."""
        if self.kind != "vq":
            raise ConfigError(
                f"indices(): {self.root} holds {self.kind!r} latents; code ids exist for 'vq' only"
            )
        if flipped and not self._manifest["flip"]:
            raise ConfigError(f"indices(flipped=True): {self.root} has no flipped latents (flip: false)")
        shard, row = self._locate(index)
        return self._read(shard, row, "indices_flip" if flipped else "indices")[0]

    def sample_index(self, index: int) -> int:
        """Position of sample `index` in the source image dataset."""
        shard, row = self._locate(index)
        return int(self._read(shard, row, "sample_index")[0])
