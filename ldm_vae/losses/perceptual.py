"""LPIPS perceptual distance with a VGG16 trunk, the perceptual term of the LDM/VQGAN autoencoder loss.

Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric" (CVPR 2018), Eq. 1:
d(x, y) = sum_l 1/(H_l W_l) sum_{h,w} || w_l * (y_hat^l_hw - x_hat^l_hw) ||^2, where x_hat^l are
VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, unit-normalised over channels, and w_l are
the learned non-negative 1x1 "linear heads" of LPIPS v0.1. As in the released code (and weights), w_l
multiplies the squared difference: sum_c w_lc * (y_hat - x_hat)_c^2. This is the same network as taming's
`taming/modules/losses/lpips.py` and the `lpips` pip package (`lpips.LPIPS(net="vgg")`), without their
dropout: the v0.1 heads are applied as plain 1x1 convs, which is what eval mode computes.

Weights are never downloaded here: `LPIPS.from_files` reads torchvision's VGG16 ImageNet file and the
`vgg.pth` heads file shipped inside the `lpips` package.
"""

import importlib.util
import os

import torch
from torch import Tensor, nn

from ldm_vae.errors import ConfigError

# ----------------------------------------------------------------------------
# constants and file helpers

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # conv widths
FEATURE_INDICES = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16().features
FEATURE_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer: ImageNet normalisation written for inputs in [-1, 1]
SCALE = (0.458, 0.448, 0.450)
VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1
VGG16_HINT = (
    f"it is torchvision's {VGG16_FILENAME}, normally in ~/.cache/torch/hub/checkpoints/ "
    "(written by torchvision.models.vgg16(weights='IMAGENET1K_V1') on a machine with internet)"
)
HEADS_HINT = "get it with `pip download --no-deps lpips`, unzip the wheel and use lpips/weights/v0.1/vgg.pth"


def default_vgg16_path() -> str:
    """Where torchvision caches the VGG16 ImageNet weights (honours $TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILENAME)


def default_heads_path() -> str | None:
    """`lpips/weights/v0.1/vgg.pth` of an installed `lpips` package, found without importing it; else None."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "v0.1", "vgg.pth")
    return path if os.path.isfile(path) else None


def _require_file(path: str, key: str, hint: str) -> None:
    if not path:
        raise ConfigError(
            f"{key} is not set and no default file was found; set it to the file's path: {hint}"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: file not found: {path}; {hint}")


def _load_state(path: str, key: str, hint: str) -> dict[str, Tensor]:
    """torch.load a state dict with weights_only=True; user-facing errors name the file and the config key."""
    _require_file(path, key, hint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; the message is what matters
        reason = type(err).__name__
        raise ConfigError(f"{key}: cannot read {path} as a torch state dict ({reason}); {hint}") from err
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path} holds a {type(state).__name__}, not a state dict; {hint}")
    return state


def _check_keys(path: str, got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    """Strict loading: the same key set and shapes, else one line naming the file and the first mismatches."""
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    if missing or unexpected:
        raise ConfigError(
            f"{path}: not the expected weights file "
            f"(missing keys {missing[:4]}, unexpected keys {unexpected[:4]})"
        )
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"{path}: {name} has shape {tuple(got[name].shape)}, expected {tuple(tensor.shape)}; "
                "is this the VGG16 / LPIPS v0.1 vgg file?"
            )


def _vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features[:30]` (to relu5_3), same layer indices so `features.N.*` keys match.

    Built here rather than through `vgg16(weights=None)`, which would also initialise the 120M-parameter
    classifier we throw away. Random init follows torchvision (Kaiming-normal fan-out, zero bias).
    """
    layers: list[nn.Module] = []
    c_in = 3
    for stage, widths in enumerate(VGG16_STAGES):
        if stage > 0:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        for c_out in widths:
            conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]  # not in-place: the tapped ReLU outputs must stay intact
            c_in = c_out
    return nn.Sequential(*layers)


def _unit_normalize(feat: Tensor) -> Tensor:
    """x / (||x||_2 over channels + 1e-10) (LPIPS `normalize_tensor`).

    `vector_norm` is used instead of sqrt(sum x^2): same value, but its gradient at an all-zero ReLU column is
    0 instead of NaN (sqrt'(0) = inf times 0).
    """
    return feat / (torch.linalg.vector_norm(feat, dim=1, keepdim=True) + 1e-10)  # (b, c, h, w)


# ----------------------------------------------------------------------------
# main class


class LPIPS(nn.Module):
    """LPIPS-VGG v0.1 distance; frozen and always in eval mode, with gradients flowing to the inputs.

    Build it with `LPIPS.from_files(vgg16_path, heads_path)` for training, or `LPIPS(random_init=True)` for
    tests (random VGG and random non-negative heads: a valid distance, but not a perceptual one).
    """

    def __init__(self, random_init: bool = False) -> None:
        super().__init__()
        if not random_init:
            raise ConfigError(
                "LPIPS() has no pretrained weights; use LPIPS.from_files(loss.lpips_vgg16_path, "
                "loss.lpips_heads_path), or LPIPS(random_init=True) in tests"
            )
        self.features = _vgg16_features()
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in FEATURE_CHANNELS)
        for head, c in zip(self.heads, FEATURE_CHANNELS, strict=True):
            nn.init.uniform_(head.weight, 0.0, 2.0 / c)  # non-negative like the trained heads; mean ~ 1/c
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.is_pretrained = False
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_files(cls, vgg16_path: str, heads_path: str) -> "LPIPS":
        """Load torchvision's VGG16 ImageNet weights (classifier.* ignored) and LPIPS v0.1 `vgg.pth` heads."""
        _require_file(str(vgg16_path), "loss.lpips_vgg16_path", VGG16_HINT)  # both present before any work
        _require_file(str(heads_path), "loss.lpips_heads_path", HEADS_HINT)
        model = cls(random_init=True)
        heads_state = _load_state(str(heads_path), "loss.lpips_heads_path", HEADS_HINT)  # small: check first
        expected_heads = {f"lin{i}.model.1.weight": h.weight for i, h in enumerate(model.heads)}  # (1,C,1,1)
        _check_keys(str(heads_path), heads_state, expected_heads)
        vgg_state = _load_state(str(vgg16_path), "loss.lpips_vgg16_path", VGG16_HINT)
        vgg_state = {k: v for k, v in vgg_state.items() if not k.startswith("classifier.")}
        expected_vgg = {f"features.{k}": v for k, v in model.features.state_dict().items()}
        _check_keys(str(vgg16_path), vgg_state, expected_vgg)
        model.features.load_state_dict({k.removeprefix("features."): v for k, v in vgg_state.items()})
        model.heads.load_state_dict({f"{i}.weight": heads_state[f"lin{i}.model.1.weight"] for i in range(5)})
        model.is_pretrained = True
        return model

    def train(self, mode: bool = True) -> "LPIPS":
        """Stay in eval mode whatever `mode` is, so a parent's `.train()` cannot switch it.

        LDM's LPIPS has dropout in its heads and a parent `.train()` turns it on during training. Ours has no
        dropout or batch statistics, so eval and train compute the same thing; pinning eval keeps it that way.
        """
        return super().train(False)

    def _features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised VGG features [(b, C_l, H_l, W_l)] at the five LPIPS taps for x in [-1, 1]."""
        h = (x - self.shift) / self.scale  # (b, 3, h, w), ImageNet-normalised
        taps = []
        for i, module in enumerate(self.features):
            h = module(h)
            if i in FEATURE_INDICES:
                taps.append(_unit_normalize(h))
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Distance (b,) between images x, y (b, 3, h, w) in [-1, 1]; 0 for identical inputs (Eq. 1).

        x and y go through VGG separately, not as one concatenated batch, so that no activations are kept
        for an input that does not require grad (the real images in training).
        """
        assert x.shape == y.shape, f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}"
        dist = x.new_zeros(x.shape[0], dtype=torch.float32)  # (b,)
        for head, feat_x, feat_y in zip(self.heads, self._features(x), self._features(y), strict=True):
            diff = (feat_x - feat_y).square()  # (b, C_l, H_l, W_l)
            dist = dist + head(diff).mean(dim=(1, 2, 3)).float()  # 1x1 head, spatial mean -> (b,)
        return dist
