"""Box-and-strip plots of one metric per label, laid out horizontally.

One row per label, named on the y axis, first label at the top, so that the
plot stays readable with dozens of labels (the figure grows with their
number). Each row shows a box plot of the finite values and every case as a
jittered dot. Infinite values (e.g. HD95 against an empty mask) are drawn as
red crosses at the right edge and counted in the row's name; NaN values are
left out.
"""

from __future__ import annotations

import math

import numpy as np

from medseg.report._figure import figure_png, new_figure
from medseg.results import ResultRow

__all__ = ["metric_plot_png"]

_ROW_IN = 0.26  # figure height per label, inches


def metric_plot_png(
    rows: list[ResultRow],
    names: dict[int, str],
    metric: str,
    title: str,
    unit_range: bool = False,
    seed: int = 0,
) -> bytes:
    """PNG of a horizontal box/strip plot of ``metric`` for each label in ``names``.

    Parameters
    ----------
    rows : results rows (all cases, all labels).
    names : label value -> name, in display order (top to bottom).
    metric : column of results.csv, e.g. ``"dice"`` or ``"hd95_mm"``.
    title : axis title.
    unit_range : fix the x axis to [0, 1] (Dice, IoU, NSD).
    seed : jitter of the dots (deterministic output).
    """
    labels = list(names)
    values = {lab: [r.get(metric) for r in rows if r.label == lab] for lab in labels}
    finite = [[v for v in values[lab] if math.isfinite(v)] for lab in labels]
    n_inf = [sum(math.isinf(v) for v in values[lab]) for lab in labels]

    fig = new_figure(7.5, 1.3 + _ROW_IN * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    positions = np.arange(len(labels))
    kept = [i for i, f in enumerate(finite) if f]
    if kept:
        ax.boxplot([finite[i] for i in kept], positions=positions[kept], **_horizontal(),
                   widths=0.6, showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#dbe7f5", "edgecolor": "#4a6d96"},
                   medianprops={"color": "#1f3b63", "linewidth": 1.5})
    x_max = _x_max(finite, unit_range)
    rng = np.random.default_rng(seed)
    xs = np.concatenate([np.asarray(f, dtype=float) for f in finite] + [np.zeros(0)])
    ys = np.repeat(positions, [len(f) for f in finite]).astype(float)
    ax.scatter(xs, ys + rng.uniform(-0.18, 0.18, ys.size), s=10, color="#222222", alpha=0.65,
               zorder=3, linewidths=0)
    if sum(n_inf):
        y_inf = np.repeat(positions, n_inf).astype(float)
        ax.scatter(np.full(y_inf.size, x_max), y_inf + rng.uniform(-0.18, 0.18, y_inf.size),
                   marker="x", s=22, color="#d62728", zorder=4, clip_on=False)
    ax.set_yticks(positions)
    ax.set_yticklabels([_tick(names[lab], n_inf[i]) for i, lab in enumerate(labels)], fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label at the top
    ax.set_xlim(0.0, x_max)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_title(title, fontsize=11)
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True, labelsize=8)
    fig.tight_layout()
    return figure_png(fig)


def _horizontal() -> dict[str, object]:
    """Keyword for a horizontal boxplot: ``orientation`` since matplotlib 3.10, else ``vert``."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _x_max(finite: list[list[float]], unit_range: bool) -> float:
    if unit_range:
        return 1.0
    largest = max((max(f) for f in finite if f), default=1.0)
    return float(largest * 1.05) if largest > 0 else 1.0


def _tick(name: str, n_inf: int) -> str:
    return f"{name} ({n_inf} inf)" if n_inf else name
