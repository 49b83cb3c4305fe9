"""Class accuracy against the guidance scale and against feature Fréchet distance: the trade-off a
classifier-free guidance sweep makes (higher guidance, more samples of the asked class, less variety),
with each autoencoder's reconstructions dashed as the ceiling no sample decoded by it can pass."""

import os
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Scores = Mapping[str, Mapping[str, float]]  # guidance scale (as text) -> {"accuracy", "frechet_vs_real"}


def save_guidance_curves(
    curves: Mapping[str, Scores], ceilings: Mapping[str, float], path: str | os.PathLike
) -> None:
    """A PNG of two panels, one line per name in `curves`: accuracy vs guidance, and accuracy vs feature
    Fréchet distance (points in guidance order); `ceilings` (name -> accuracy) are dashed lines."""
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    by_guidance, by_frechet = figure.subplots(1, 2)
    lowest_guidance = min((float(g) for scores in curves.values() for g in scores), default=1.0)
    for name, scores in curves.items():
        guidance = sorted(scores, key=float)
        accuracy = [scores[g]["accuracy"] for g in guidance]
        by_guidance.plot([float(g) for g in guidance], accuracy, "o-", label=name)
        by_frechet.plot([scores[g]["frechet_vs_real"] for g in guidance], accuracy, "o-", label=name)
        for g, x, y in zip(guidance, [scores[g]["frechet_vs_real"] for g in guidance], accuracy, strict=True):
            by_frechet.annotate(
                f"{float(g):g}", (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3)
            )
    for name, accuracy in ceilings.items():
        for axes in (by_guidance, by_frechet):
            axes.axhline(accuracy, linestyle="--", linewidth=0.8, color="gray")
        by_guidance.annotate(
            f"{name}", (lowest_guidance, accuracy), fontsize=7, xytext=(0, 2), textcoords="offset points"
        )
    by_guidance.set(xlabel="guidance scale", ylabel="class accuracy (judge)", ylim=(0, 1))
    by_frechet.set(
        xlabel="feature Fréchet distance to real images (labels: guidance)",
        ylabel="class accuracy (judge)",
        ylim=(0, 1),
    )
    if curves:
        by_guidance.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
