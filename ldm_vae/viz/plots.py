"""Loss curves from the logged rows of `stats.jsonl`, drawn headless with matplotlib's Agg canvas.

Plots the scalar terms of the LDM first-stage objective (Rombach et al., CVPR 2022, Appendix G) against the
optimizer step, one panel per key, so that e.g. the jump when the discriminator switches on is visible.
"""

import math
import os
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL_HEIGHT_IN = 2.2  # inches per subplot
FIGURE_WIDTH_IN = 8.0


def _is_number(value: Any) -> bool:
    """Plain finite int or float (bools and NaN/inf are not plotted)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalar_keys(stats: Sequence[dict[str, Any]]) -> list[str]:
    """Every key except `step` that holds a number in some row, in first-seen order."""
    keys: dict[str, None] = {}
    for row in stats:
        for key, value in row.items():
            if key != "step" and _is_number(value):
                keys.setdefault(key)
    return list(keys)


def save_loss_curves(
    stats: Sequence[dict[str, Any]], path: str | os.PathLike, keys: list[str] | None = None
) -> None:
    """Write a PNG with one panel per key of `value vs step`; rows lacking `step` or the key are skipped.

    `stats` are logged rows like {"step": 10, "train/rec_loss": 0.3}. `keys=None` plots every numeric key.
    A panel uses a log y axis when all its values are positive. The figure is drawn on an Agg canvas, not
    through pyplot, so it needs no display and leaves no global figure state behind.
    """
    keys = _scalar_keys(stats) if keys is None else keys
    fig = Figure(figsize=(FIGURE_WIDTH_IN, PANEL_HEIGHT_IN * max(len(keys), 1)), layout="constrained")
    FigureCanvasAgg(fig)
    if not keys:
        fig.text(0.5, 0.5, "no scalar keys to plot", ha="center", va="center")
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0] if keys else []
    for ax, key in zip(axes, keys, strict=True):
        rows = [row for row in stats if _is_number(row.get("step")) and _is_number(row.get(key))]
        points = [(row["step"], row[key]) for row in rows]
        if not points:
            ax.text(0.5, 0.5, f"no values for {key}", ha="center", va="center", transform=ax.transAxes)
        else:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, linewidth=1.0)
            if min(values) > 0:
                ax.set_yscale("log")
        ax.set_title(key)
        ax.set_ylabel(key.rsplit("/", 1)[-1])
        ax.grid(True, alpha=0.3)
    if keys:
        axes[-1].set_xlabel("step")
    fig.suptitle(f"loss curves ({len(stats)} logged rows)")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
