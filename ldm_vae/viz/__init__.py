"""Pictures for runs: reconstruction grids and loss curves (headless)."""

from ldm_vae.viz.grids import reconstruction_grid, save_reconstruction_grid
from ldm_vae.viz.plots import save_loss_curves

__all__ = ["reconstruction_grid", "save_loss_curves", "save_reconstruction_grid"]
