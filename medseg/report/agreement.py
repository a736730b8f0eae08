"""Bland-Altman plots of predicted against true volume, one small panel per label.

Each panel shows one dot per case where the label is in either mask (the rows
the summary's ``volume_agreement`` is over): x = mean of the predicted and the
true volume, y = predicted minus true volume, both in mL. The solid line is
the bias and the dashed lines the 95 % limits of agreement, all three read
from the summary (never recomputed); the title gives the label, ``n`` and
Pearson's r.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medseg.report._figure import figure_png, new_figure
from medseg.results import ResultRow

__all__ = ["bland_altman_png"]

_PANEL_IN = (2.7, 2.2)  # width, height of one panel, inches
_COLUMNS = 4


def bland_altman_png(rows: list[ResultRow], names: Mapping[int, str],
                     agreement: Mapping[int, Mapping[str, Any]]) -> bytes | None:
    """PNG of one Bland-Altman panel per label of ``agreement`` with at least one case.

    Parameters
    ----------
    rows : results rows (all cases, all labels); ``vol_pred_ml`` and ``vol_gt_ml``
        give the dots.
    names : label value -> name.
    agreement : label value -> its ``volume_agreement`` from the summary
        (``n``, ``bias_ml``, ``loa_low_ml``, ``loa_high_ml``, ``pearson_r``).

    Returns
    -------
    The PNG bytes, or None when no label has a case to draw.
    """
    labels = [label for label, a in agreement.items() if a.get("n")]
    if not labels:
        return None
    n_cols = min(_COLUMNS, len(labels))
    n_rows = math.ceil(len(labels) / n_cols)
    fig = new_figure(_PANEL_IN[0] * n_cols, _PANEL_IN[1] * n_rows + 0.5)
    for index, label in enumerate(labels, start=1):
        ax = fig.add_subplot(n_rows, n_cols, index)
        _panel(ax, _points(rows, label), agreement[label], names.get(label, f"label {label}"))
    fig.supxlabel("mean of predicted and true volume (mL)", fontsize=9)
    fig.supylabel("predicted - true volume (mL)", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _points(rows: list[ResultRow], label: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, difference) of the volumes of ``label`` in the cases where it is in a mask."""
    pairs = np.array([(r.get("vol_pred_ml"), r.get("vol_gt_ml")) for r in rows
                      if r.label == label and r.status != "both_empty"], dtype=np.float64)
    pairs = pairs.reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    return pairs.mean(axis=1), pairs[:, 0] - pairs[:, 1]


def _panel(ax: Any, points: tuple[np.ndarray, np.ndarray], agreement: Mapping[str, Any],
           name: str) -> None:
    means, diffs = points
    ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    ax.scatter(means, diffs, s=14, color="#1f3b63", alpha=0.8, linewidths=0, zorder=3)
    if agreement.get("bias_ml") is not None:
        ax.axhline(agreement["bias_ml"], color="#c62828", linewidth=1.2)
    for key in ("loa_low_ml", "loa_high_ml"):
        if agreement.get(key) is not None:
            ax.axhline(agreement[key], color="#c62828", linewidth=1.0, linestyle="--")
    r = agreement.get("pearson_r")
    r_text = "r n/a" if r is None else f"r={r:.3f}"
    ax.set_title(f"{name} (n={agreement['n']}, {r_text})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
