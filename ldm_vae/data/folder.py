"""A folder of images as a labelled, captioned dataset that starts in O(directories), not O(files).

The folder is indexed once (`index.py`: paths, classes, sizes and captions from file headers, cached with
the folder's fingerprint); nothing is decoded up front. A file whose header does not parse is left out
and reported at start; one that breaks later, or whose pixels are truncated, is replaced when read
(`indexed.py`). `ldm-vae check-data FOLDER` decodes everything when a user wants to know up front.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ldm_vae.data.decode import load_rgb
from ldm_vae.data.index import IMAGE_SUFFIXES, folder_index
from ldm_vae.data.indexed import IndexedImageDataset, listed_skips
from ldm_vae.errors import ConfigError


class ImageFolderDataset(IndexedImageDataset):
    """Images under `root`, resized (shorter side) and centre-cropped to (3, R, R) float32 in [-1, 1].

    Labels: each first-level sub-folder is a class; images directly in `root` form a class named "." (which
    sorts first). With no sub-folders every image has label 0. Only classes with at least one indexed image
    exist. Transparent pixels are composited over white. `sample_key(i)` is the relative posix path (stable
    as files are added, so the held-out split hashes it); `caption(i)` comes from the index (`index.py`).
    """

    def __init__(self, root: str | Path, resolution_px: int) -> None:
        super().__init__(resolution_px)
        self.root = Path(root).expanduser()
        self.source = str(self.root)
        if not self.root.exists():
            raise ConfigError(f"data.source='{self.root}': folder does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"data.source='{self.root}': is a file; point it at a folder of images")

        self.adopt(folder_index(self.root))
        if len(self) == 0:
            raise ConfigError(
                f"data.source='{self.root}': no readable images ({self.num_seen} files with suffixes "
                f"{'/'.join(IMAGE_SUFFIXES)} seen, {len(self.skipped)} skipped"
                + (f": {listed_skips(self.skipped)}" if self.skipped else "")
                + "); point it at a folder of images"
            )

    def open_image(self, i: int) -> Image.Image:
        return load_rgb(self.root / self._keys[i], self.resolution_px)
