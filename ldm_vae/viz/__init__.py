"""Pictures for runs: reconstruction grids, sample grids by class, loss and guidance curves (headless)."""

from ldm_vae.viz.grids import reconstruction_grid, save_reconstruction_grid
from ldm_vae.viz.guidance import save_guidance_curves
from ldm_vae.viz.plots import save_loss_curves
from ldm_vae.viz.samples import class_grid, save_class_grid

__all__ = [
    "class_grid",
    "reconstruction_grid",
    "save_class_grid",
    "save_guidance_curves",
    "save_loss_curves",
    "save_reconstruction_grid",
]
