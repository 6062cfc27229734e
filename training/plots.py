"""Figures logged with every run: the cost–quality curves and the calibration diagram."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from router.evaluate import Curve, upper_hull


def cost_quality_figure(curves: Mapping[str, Curve], top_cost: float) -> Figure:
    """Quality against cost (as % of the top tier's cost): hulls for curves, markers for points."""
    fig = Figure(figsize=(8, 5.5))  # no pyplot: no global backend or figure registry to set up on import
    ax = fig.add_subplot()
    for name, curve in curves.items():
        x = curve.cost / top_cost * 100
        if len(curve.cost) == 1:
            ax.scatter(x, curve.quality, s=50, zorder=3, label=name)
            continue
        hc, hq = upper_hull(curve.cost, curve.quality)
        # Sample the hull densely: on a log axis a straight segment would be drawn as a curve.
        xs = np.geomspace(max(hc[0], 1e-12), hc[-1], 400) if hc[-1] > hc[0] else hc
        line = ax.plot(xs / top_cost * 100, np.interp(xs, hc, hq), lw=2 if name == "router" else 1.2, label=name)[0]
        ax.scatter(x, curve.quality, s=4, alpha=0.3, color=line.get_color())
    ax.set_xlabel("mean cost per prompt, % of the top tier's")
    ax.set_ylabel("mean quality (realised score)")
    ax.set_xscale("symlog", linthresh=1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Cost–quality on the held-out prompts")
    fig.tight_layout()
    return fig


def calibration_figure(pred: np.ndarray, actual: np.ndarray, tier_names: Sequence[str], n_bins: int = 10) -> Figure:
    """Reliability diagram: mean realised score per bin of predicted score, per tier.

    Binned by hand: sklearn's calibration_curve takes binary labels only, and scores here are fractions.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for j, name in enumerate(tier_names):
        bins = np.minimum((pred[:, j] * n_bins).astype(int), n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            sel = bins == b
            if sel.sum() >= 5:
                xs.append(pred[sel, j].mean())
                ys.append(actual[sel, j].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("realised score")
    ax.legend()
    ax.set_title("Calibration on the held-out prompts")
    fig.tight_layout()
    return fig
