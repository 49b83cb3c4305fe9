"""Load a diffusers autoencoder folder from local disk, with one-line errors naming the option."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, ModelMixin, VQModel

from ldm_vae.errors import ConfigError

AUTOENCODER_CLASSES: dict[str, type[ModelMixin]] = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}


def load_autoencoder(
    folder: str | Path, key: str, kinds: tuple[str, ...] = tuple(AUTOENCODER_CLASSES)
) -> ModelMixin:
    """An AutoencoderKL or VQModel folder (only `kinds` accepted), never from a hub, in eval mode."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}={str(folder)!r}: not a diffusers model folder (no config.json in it)")
    try:
        class_name = json.loads((path / "config.json").read_text()).get("_class_name")
    except json.JSONDecodeError:
        raise ConfigError(f"{key}={str(folder)!r}: config.json is not valid JSON") from None
    if class_name not in kinds:
        raise ConfigError(f"{key}={str(folder)!r}: a {class_name}, expected {' or '.join(kinds)}")
    try:
        return AUTOENCODER_CLASSES[class_name].from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError, TypeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{key}={str(folder)!r}: cannot load as {class_name} ({first_line})") from None
