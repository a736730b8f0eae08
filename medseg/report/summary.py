"""Per-label summary statistics and the ranking of cases by mean Dice.

Statistics (mean, median, standard deviation) are computed over the *finite*
values of a metric only: NaN (e.g. Dice when both masks are empty) and inf
(e.g. HD95 against an empty mask) are left out, and ``n_finite`` says how many
values were used. The status counts tell why values are missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medseg.report.results import STATUSES, ResultRow

__all__ = ["LabelSummary", "MetricStats", "summarize", "case_mean_dice", "worst_cases"]

SUMMARY_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd")


@dataclass(frozen=True)
class MetricStats:
    """Mean, median and (population) standard deviation of the finite values."""

    mean: float
    median: float
    std: float
    n_finite: int


@dataclass(frozen=True)
class LabelSummary:
    """Summary of one label over all cases."""

    label: int
    name: str
    n: int
    status_counts: dict[str, int]
    stats: dict[str, MetricStats]


def metric_stats(values: list[float]) -> MetricStats:
    """Statistics of the finite entries of ``values`` (NaN everywhere when there are none)."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return MetricStats(math.nan, math.nan, math.nan, 0)
    return MetricStats(
        float(finite.mean()), float(np.median(finite)), float(finite.std()), int(finite.size)
    )


def summarize(rows: list[ResultRow], names: dict[int, str]) -> list[LabelSummary]:
    """One :class:`LabelSummary` per label present in ``rows``, sorted by label value."""
    by_label: dict[int, list[ResultRow]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    summaries = []
    for label in sorted(by_label):
        group = by_label[label]
        counts = {status: sum(r.status == status for r in group) for status in STATUSES}
        stats = {m: metric_stats([r.get(m) for r in group]) for m in SUMMARY_METRICS}
        summaries.append(LabelSummary(label, names.get(label, f"label {label}"), len(group),
                                      counts, stats))
    return summaries


def case_mean_dice(rows: list[ResultRow]) -> dict[str, float]:
    """Mean of the finite Dice values of each case (NaN when it has none), in first-seen order."""
    values: dict[str, list[float]] = {}
    for row in rows:
        values.setdefault(row.case, []).append(row.get("dice"))
    return {case: metric_stats(v).mean for case, v in values.items()}


def worst_cases(rows: list[ResultRow], n: int) -> list[tuple[str, float]]:
    """The ``n`` cases with the lowest mean Dice, worst first; cases without any Dice go last."""
    means = case_mean_dice(rows)
    ranked = sorted(means.items(), key=lambda kv: (math.isnan(kv[1]), kv[1], kv[0]))
    return ranked[: max(0, n)]
