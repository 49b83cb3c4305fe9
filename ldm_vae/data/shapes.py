"""`builtin:shapes`: coloured shapes on coloured backgrounds, rendered on the fly at any resolution.

A procedural dataset with known generative factors (class, position, size, rotation, colours), in the spirit
of dSprites (Matthey et al. 2017), but in colour. It needs no files, so the demo, the tests and CPU smoke runs
train on it. Each sample is a pure function of (seed, index): the same scene comes out at every resolution,
in every worker and on every machine.

Shapes are drawn from analytic signed distance functions (SDFs, in the style of Inigo Quilez's 2D distance
functions) and anti-aliased by pixel coverage, `coverage = clamp(0.5 - distance_px, 0, 1)`, so edges stay
smooth from 16 px to 256 px without supersampling.
"""

import math

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE_KINDS = ["circle", "square", "triangle", "diamond", "cross", "ring"]  # label = position in this list
_MIN_LUMA_CONTRAST = 0.25  # |luma(shape) - luma(background)| so the shape is always visible
_SEED_MASK = (1 << 64) - 1  # SeedSequence wants non-negative entropy; negative seeds wrap, still distinct

# ---------------------------------------------------------------------------------------------------------
# helpers: signed distances in units of the image side, for points p = (x, y) relative to the centre.
# r is the circumradius, so every kind fits in the same circle and `size` means the same for all of them.


def _box(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Exact SDF of an axis-aligned rectangle."""
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _triangle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Exact SDF of an equilateral triangle centred on its centroid (Quilez, sdEquilateralTriangle)."""
    k = math.sqrt(3.0)
    half_side = r * k / 2
    px, py = np.abs(x) - half_side, -y + half_side / k  # flip y: image rows grow downwards
    fold = px + k * py > 0.0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2.0 * half_side, 0.0)
    return -np.hypot(px, py) * np.sign(py)


def _diamond(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Rhombus with half-axes r (vertical) and 0.6 r: distance to the edge line, exact away from vertices."""
    a, b = 0.6 * r, r
    return (np.abs(x) / a + np.abs(y) / b - 1.0) / math.hypot(1.0 / a, 1.0 / b)


def _signed_distance(kind: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance to shape `kind` (negative inside)."""
    if kind == "circle":
        return np.hypot(x, y) - r
    if kind == "square":
        return _box(x, y, r / math.sqrt(2.0), r / math.sqrt(2.0))
    if kind == "triangle":
        return _triangle(x, y, r)
    if kind == "diamond":
        return _diamond(x, y, r)
    if kind == "cross":
        arm, half_thick = r / math.hypot(1.0, 0.3), 0.3 * r / math.hypot(1.0, 0.3)
        return np.minimum(_box(x, y, arm, half_thick), _box(x, y, half_thick, arm))
    if kind == "ring":
        return np.abs(np.hypot(x, y) - 0.75 * r) - 0.25 * r
    raise AssertionError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")


def _luma(rgb: np.ndarray) -> float:
    """Rec. 601 luma of an RGB colour in [0, 1]."""
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(shape, background) RGB in [0, 1] whose lumas differ enough for the shape to stand out."""
    background = rng.random(3)
    for _ in range(32):
        shape = rng.random(3)
        if abs(_luma(shape) - _luma(background)) >= _MIN_LUMA_CONTRAST:
            return shape, background
    # Rare: fall back to black or white, whichever is further from the background (contrast >= 0.5).
    return (np.zeros(3) if _luma(background) > 0.5 else np.ones(3)), background


# ---------------------------------------------------------------------------------------------------------
# main class


class ShapesDataset(Dataset):
    """Procedural shapes; `__getitem__` gives an image (3, H, W) float32 in [-1, 1] and the shape's label."""

    def __init__(self, num_samples: int, resolution_px: int, seed: int = 0) -> None:
        if num_samples < 1 or resolution_px < 1:
            raise ValueError(f"num_samples={num_samples} and resolution_px={resolution_px} must both be >= 1")
        self.num_samples = num_samples
        self.resolution_px = resolution_px
        self.seed = seed
        self.classes: list[str] = list(SHAPE_KINDS)
        centres = (np.arange(resolution_px, dtype=np.float32) + 0.5) / resolution_px  # pixel centres, (0, 1)
        self._grid_x = centres[None, :]  # (1, W), broadcasts against rows
        self._grid_y = centres[:, None]  # (H, 1)

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for ShapesDataset of {self.num_samples} samples")

    def factors(self, i: int) -> dict[str, float | int | list[float]]:
        """The generative factors of sample i: independent of the resolution, so every size shows one scene.

        centre_x, centre_y in [0, 1] (fraction of the image side, origin top-left); size = circumscribed
        diameter as a fraction of the side; rotation_deg counter-clockwise; colours RGB in [0, 1].
        """
        self._check_index(i)
        rng = np.random.default_rng([self.seed & _SEED_MASK, i])
        label = int(rng.integers(len(SHAPE_KINDS)))
        size = float(rng.uniform(0.3, 0.7))
        centre_x, centre_y = (float(c) for c in rng.uniform(size / 2, 1 - size / 2, size=2))  # fully inside
        rotation_deg = float(rng.uniform(0.0, 360.0))
        shape_rgb, background_rgb = _contrasting_colours(rng)
        return {
            "label": label,
            "centre_x": centre_x,
            "centre_y": centre_y,
            "size": size,
            "rotation_deg": rotation_deg,
            "shape_rgb": [float(c) for c in shape_rgb],
            "background_rgb": [float(c) for c in background_rgb],
        }

    def render(self, i: int) -> np.ndarray:
        """Sample i as an (H, W, 3) float32 array in [0, 1]."""
        return self._render(self.factors(i))

    def _render(self, f: dict) -> np.ndarray:
        theta = math.radians(f["rotation_deg"])
        cos, sin = math.cos(theta), math.sin(theta)
        dx, dy = self._grid_x - f["centre_x"], self._grid_y - f["centre_y"]  # (1, W), (H, 1)
        x, y = cos * dx - sin * dy, sin * dx + cos * dy  # (H, W) each: rotate the plane, not the shape
        distance_px = _signed_distance(SHAPE_KINDS[f["label"]], x, y, f["size"] / 2) * self.resolution_px
        coverage = np.clip(0.5 - distance_px, 0.0, 1.0)[..., None]  # (H, W, 1): fraction of pixel inside
        shape = np.asarray(f["shape_rgb"], dtype=np.float32)
        background = np.asarray(f["background_rgb"], dtype=np.float32)
        return (background + coverage * (shape - background)).astype(np.float32)  # (H, W, 3)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self.factors(i)
        image = torch.from_numpy(self._render(f)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return (image * 2.0 - 1.0).contiguous(), int(f["label"])

    def sample_key(self, i: int) -> str:
        """Stable name of sample i, hashed by the train/held-out split."""
        self._check_index(i)
        return f"shapes/{i}"
