"""The training spine both jobs share: accelerator setup, the optimizer step, checkpoints, tracking."""
