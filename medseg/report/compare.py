"""The report's comparison section: ``compare.json`` of ``medseg compare`` as tables and plots.

Everything comes from the ``compare.json`` (:class:`medseg.compare.Comparison`);
no statistic is recomputed. Per metric, a table of the per-label statistics
and a plot of the paired differences B - A: one row per label, each case a dot,
the mean a diamond and the bootstrap 95 % interval a bar; infinite differences
(e.g. a missed structure) are red crosses at the edge of their side.
"""

from __future__ import annotations

import json
import math
import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError
from medseg.report._figure import figure_png, new_figure
from medseg.report.markup import (TITLES, data_value, fmt_number, html_table, img_tag,
                                  num_cell, text_cell)

__all__ = ["load_comparison", "compare_section", "differences_plot_png"]

_KEYS = ("a", "b", "metrics", "rows", "pairs", "policy")
_ROW_IN = 0.28  # figure height per label, inches


def load_comparison(path: str | os.PathLike) -> dict[str, Any]:
    """The content of a ``compare.json``; DataError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("comparison file does not exist (expected the compare.json of "
                        "'medseg compare')", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"comparison file is not valid JSON: {exc}", path) from None
    missing = [k for k in _KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"not a compare.json of 'medseg compare': missing {', '.join(missing)}",
                        path)
    return data


def compare_section(data: dict[str, Any]) -> str:
    """HTML section of a loaded ``compare.json`` (:func:`load_comparison`)."""
    parts = [
        "<h2 id=\"compare\">Comparison of two evaluations</h2>",
        f"<p class=\"meta\">A = {escape(str(data['a']))}, B = {escape(str(data['b']))}; "
        f"{data.get('n_pairs', len(data['pairs']['case']))} (case, label) pairs, convention "
        f"{escape(str(data.get('convention')))}.</p>",
        "<p class=\"note\">" + "<br>".join(
            f"{escape(k)}: {escape(str(v))}" for k, v in data["policy"].items()) + "</p>",
    ]
    for metric in data["metrics"]:
        rows = [r for r in data["rows"] if r["metric"] == metric]
        title = TITLES.get(metric, metric)
        parts.append(f"<h3>{escape(title)}: B - A ({escape(rows[0]['better'] if rows else '')} "
                     "is better)</h3>")
        plot = img_tag(differences_plot_png(data, metric), f"{title}: B - A per case",
                    f"compare-{metric}")
        parts.append(f"<div class=\"row\"><div class=\"scroll\">{_stats_table(rows)}</div>"
                     f"{plot}</div>")
    return "\n".join(parts)


def _stats_table(rows: list[dict[str, Any]]) -> str:
    head = [("Label", True), ("Name", False), ("n", True), ("inf", True), ("mean A", True),
            ("mean B", True), ("B - A", True), ("CI low", True), ("CI high", True),
            ("p", True), ("p Holm", True), ("wins", True), ("ties", True), ("losses", True)]
    body = []
    for r in rows:
        cells = [num_cell(r["label"], 0), text_cell(r["label_name"] or ""),
                 num_cell(r["n_pairs"], 0), num_cell(r["n_nonfinite"], 0)]
        cells += [num_cell(_float(r[k]), 4) for k in ("mean_a", "mean_b", "mean_diff",
                                                       "ci_low", "ci_high")]
        cells += [_p_cell(_float(r[k])) for k in ("p_value", "p_holm")]
        cells += [num_cell(r[k], 0) for k in ("wins", "ties", "losses")]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return html_table(None, head, body)


def differences_plot_png(data: dict[str, Any], metric: str) -> bytes:
    """PNG: per label (one row each) the differences B - A per case, mean and bootstrap CI."""
    rows = [r for r in data["rows"] if r["metric"] == metric]
    labels = [r["label"] for r in rows]
    pair_labels = np.asarray(data["pairs"]["label"])
    diffs = _float_array(data["pairs"]["b"][metric]) - _float_array(data["pairs"]["a"][metric])
    fig = new_figure(6.5, 1.4 + _ROW_IN * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    per_label = [diffs[pair_labels == label] for label in labels]
    finite = np.concatenate([d[np.isfinite(d)] for d in per_label] + [np.zeros(1)])
    edge = 1.08 * max(float(np.abs(finite).max()), 1e-9)
    rng = np.random.default_rng(0)
    for y, (row, d) in enumerate(zip(rows, per_label)):
        shown = d[np.isfinite(d)]
        ax.scatter(shown, y + rng.uniform(-0.2, 0.2, shown.size), s=9, color="#444444",
                   alpha=0.6, linewidths=0, zorder=3)
        inf = d[np.isinf(d)]
        ax.scatter(np.sign(inf) * edge, np.full(inf.size, float(y)), marker="x", s=24,
                   color="#d62728", zorder=4, clip_on=False)
        low, high, mean = (_float(row[k]) for k in ("ci_low", "ci_high", "mean_diff"))
        if math.isfinite(low):
            ax.plot([low, high], [y, y], color="#1f5fa8", linewidth=3, zorder=5)
            ax.scatter([mean], [y], marker="D", s=30, color="#1f5fa8", zorder=6)
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([f"{r['label']} {r['label_name'] or ''}".strip() for r in rows],
                       fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(-edge, edge)
    ax.set_xlabel(f"B - A ({TITLES.get(metric, metric)}; {rows[0]['better'] if rows else ''} "
                  "is better)", fontsize=9)
    ax.set_title("B - A per case (dots; red x: infinite), mean and 95 % bootstrap CI (blue)",
                 fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def _float(value: Any) -> float:
    """A compare.json number: null is NaN, ``"inf"``/``"-inf"`` infinite."""
    return math.nan if value is None else float(value)


def _float_array(values: list[Any]) -> np.ndarray:
    return np.array([_float(v) for v in values], dtype=np.float64)


def _p_cell(p: float) -> str:
    text = fmt_number(p, 3) if math.isnan(p) or p >= 0.001 else f"{p:.1e}"
    return f"<td data-v=\"{data_value(p)}\">{text}</td>"
