"""Paired comparison of two evaluations of the same cases (model B against model A).

:func:`compare_results` loads two ``results.csv`` (:meth:`medseg.results.Results.load`;
metrics are never recomputed), pairs their rows by ``(case, label)`` and, per
label and metric, gives:

* ``n_pairs`` (pairs with no NaN), ``n_used`` (pairs where both values are
  finite) and ``n_nonfinite`` (pairs with an infinite value);
* ``mean_a``, ``mean_b`` and ``mean_diff`` = mean of **B - A** over the
  ``n_used`` finite pairs, and its seeded percentile bootstrap 95 % confidence
  interval ``ci_low``, ``ci_high`` (:func:`bootstrap_ci`);
* ``p_value``: the two-sided Wilcoxon signed-rank test of the differences
  (``scipy.stats.wilcoxon``, ``zero_method="wilcox"``: zero differences are
  dropped, ``method="auto"``), ``p_holm``: Holm's correction across the labels
  of the metric (:func:`holm`);
* ``wins``, ``ties``, ``losses``: pairs where B is better, equal
  (``|B - A| <= 1e-12``) or worse; better = higher Dice, IoU, accuracy and NSD,
  lower distances (:data:`BETTER`).

Infinite distances (a missed structure) are handled by ranks: ``inf - inf`` is
a tie and ``inf - finite`` a difference larger than every finite one (with its
sign) in the Wilcoxon test and the win/tie/loss counts; the means and the
bootstrap leave those pairs out and count them (``n_nonfinite``). A pair with
a NaN is left out of everything (``n_nan``). Pairs where both rows are
``both_empty`` are left out (as evaluate's summary does) and counted; a pair
with one ``both_empty`` row is kept with its convention's value.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError, UsageError, check_option
from medseg.results import ResultRow, Results

__all__ = ["BETTER", "COMPARE_COLUMNS", "DEFAULT_METRICS", "CompareOptions", "Comparison",
           "compare_results", "bootstrap_ci", "holm", "signed_differences", "wilcoxon_p"]

log = logging.getLogger(__name__)

#: Direction in which each comparable metric is better.
BETTER = {"dice": "higher", "iou": "higher", "accuracy": "higher", "nsd": "higher",
          "hd_mm": "lower", "hd95_mm": "lower", "avd_mm": "lower", "assd_mm": "lower"}
DEFAULT_METRICS = ("dice", "hd95_mm", "assd_mm", "nsd")
TIE_TOLERANCE = 1e-12
LEVEL = 0.95
COMPARE_COLUMNS = (
    "label", "label_name", "metric", "better", "n_pairs", "n_used", "n_nonfinite", "n_nan",
    "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value", "p_holm",
    "wins", "ties", "losses",
)
POLICY = {
    "difference": "B - A (positive: B higher)",
    "pairs": "rows paired by (case, label); pairs where both rows are both_empty are left out "
             "(as evaluate's summary does); a pair with a NaN is left out and counted (n_nan)",
    "inf": "infinite values are handled by ranks: inf - inf is a tie, inf - finite a difference "
           "larger than every finite one (Wilcoxon, wins/ties/losses); the means and the "
           "bootstrap use the finite pairs only (n_used) and count the others (n_nonfinite)",
    "ties": f"|B - A| <= {TIE_TOLERANCE:g} is a tie (difference 0)",
    "wilcoxon": "scipy.stats.wilcoxon, two-sided, zero_method='wilcox' (zero differences "
                "dropped), method='auto'; p_holm: Holm's correction across labels, per metric",
    "bootstrap": "percentile bootstrap of the mean difference over the finite pairs, 95 %",
}
_SHOWN = 5  # unpaired rows listed in an error


@dataclass(frozen=True)
class CompareOptions:
    """Options of :func:`compare_results`.

    Attributes
    ----------
    metrics : metrics to compare (keys of :data:`BETTER`); default :data:`DEFAULT_METRICS`.
    intersect : drop (and log) the rows without a partner instead of failing.
    seed : seed of the bootstrap (the same seed gives the same intervals).
    n_bootstrap : bootstrap resamples.
    """

    metrics: tuple[str, ...] = DEFAULT_METRICS
    intersect: bool = False
    seed: int = 0
    n_bootstrap: int = 2000

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.metrics:
            raise UsageError("metrics: give at least one metric to compare")
        for metric in self.metrics:
            check_option(metric, BETTER, "metric")
        for name, low in (("seed", 0), ("n_bootstrap", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class Comparison:
    """Per label x metric statistics of B against A, and the pairs they come from."""

    rows: list[dict[str, Any]]
    info: dict[str, Any]
    pairs: list[tuple[ResultRow, ResultRow]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """compare.json: ``info``, ``rows`` and the paired values (NaN null, inf ``"inf"``)."""
        metrics = self.info["metrics"]
        pairs = {"case": [a.case for a, _ in self.pairs],
                 "label": [a.label for a, _ in self.pairs],
                 "a": {m: [_json_value(a.get(m)) for a, _ in self.pairs] for m in metrics},
                 "b": {m: [_json_value(b.get(m)) for _, b in self.pairs] for m in metrics}}
        rows = [{k: _json_value(v) for k, v in row.items()} for row in self.rows]
        return {**self.info, "rows": rows, "pairs": pairs}

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``compare.csv`` and ``compare.json`` into ``out_dir`` (created), atomically."""
        import json

        from medseg.io.atomic import atomic_write_text
        from medseg.results import csv_text

        out = Path(out_dir)
        csv_path, json_path = out / "compare.csv", out / "compare.json"
        atomic_write_text(csv_path, csv_text(COMPARE_COLUMNS, self.rows))
        text = json.dumps(self.to_json(), indent=1, allow_nan=False)
        atomic_write_text(json_path, text + "\n")
        log.info("wrote %s and %s (%d pairs)", csv_path, json_path.name, len(self.pairs))
        return csv_path, json_path


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# -- statistics -------------------------------------------------------------------------------
def signed_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """B - A for ranking: ties (``|B - A| <= 1e-12``, ``inf - inf``) 0, ``inf - finite``
    a value of that sign larger in magnitude than every finite difference.

    ``a`` and ``b`` hold no NaN.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = b - a
    diff[np.isnan(diff) | (np.abs(diff) <= TIE_TOLERANCE)] = 0.0  # nan here: inf - inf
    infinite = np.isinf(diff)
    finite = np.abs(diff[~infinite])
    large = 2.0 * (float(finite.max()) if finite.size else 0.0) + 1.0
    diff[infinite] = np.sign(diff[infinite]) * large
    return diff


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diff`` (zero_method ``"wilcox"``);
    NaN when every difference is 0 (or there is none)."""
    from scipy.stats import wilcoxon

    diff = np.asarray(diff, dtype=np.float64)
    if not np.count_nonzero(diff):
        return math.nan
    return float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and
    does not count in the number of tests."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    kept = np.flatnonzero(~np.isnan(p))
    order = kept[np.argsort(p[kept], kind="stable")]
    m, running = order.size, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def bootstrap_ci(diff: np.ndarray, n_resamples: int = 2000, seed: int | Sequence[int] = 0,
                 level: float = LEVEL) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` (finite values).

    ``n_resamples`` resamples of ``diff.size`` values drawn with replacement by
    ``numpy.random.default_rng(seed)``; the interval is the ``(1 - level) / 2``
    and ``(1 + level) / 2`` quantiles of their means. NaN for an empty ``diff``.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if not diff.size:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 20) // diff.size)  # bound memory for many pairs
    means = np.concatenate([
        diff[rng.integers(0, diff.size, size=(min(chunk, n_resamples - start), diff.size))]
        .mean(axis=1) for start in range(0, n_resamples, chunk)])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _paired_stats(a: np.ndarray, b: np.ndarray, better: str, seed: list[int],
                  n_bootstrap: int) -> dict[str, Any]:
    """Statistics of one label and metric over its pairs (see the module docstring)."""
    nan = np.isnan(a) | np.isnan(b)
    a, b = a[~nan], b[~nan]
    diff = signed_differences(a, b)
    finite = np.isfinite(a) & np.isfinite(b)
    fa, fb = a[finite], b[finite]
    sign = 1.0 if better == "higher" else -1.0
    out: dict[str, Any] = {
        "n_pairs": int(a.size), "n_used": int(finite.sum()), "n_nonfinite": int((~finite).sum()),
        "n_nan": int(nan.sum()),
        "mean_a": float(fa.mean()) if fa.size else math.nan,
        "mean_b": float(fb.mean()) if fb.size else math.nan,
        "mean_diff": float((fb - fa).mean()) if fa.size else math.nan,
    }
    out["ci_low"], out["ci_high"] = bootstrap_ci(fb - fa, n_bootstrap, seed)
    out["p_value"] = wilcoxon_p(diff)
    out.update(wins=int((sign * diff > 0).sum()), ties=int((diff == 0).sum()),
               losses=int((sign * diff < 0).sum()))
    return out


# -- pairing ----------------------------------------------------------------------------------
def compare_results(results_a: str | os.PathLike, results_b: str | os.PathLike,
                    options: CompareOptions | None = None) -> Comparison:
    """Paired statistics of B against A per label and metric (see the module docstring).

    Parameters
    ----------
    results_a, results_b : ``results.csv`` files of ``medseg evaluate`` (or their
        folders), with the ``summary.json`` beside them.
    options : metrics, ``intersect``, bootstrap seed and resamples.

    Raises
    ------
    DataError
        Different conventions or label sets, unpaired rows (without
        ``intersect``), no pair left, a metric missing from a file; the
        message names both files.
    """
    options = options or CompareOptions()
    paths = (Path(results_a), Path(results_b))
    loaded = (Results.load(paths[0]), Results.load(paths[1]))
    convention = _check_compatible(loaded, paths, options.metrics)
    pairs, n_both_empty, n_dropped = _pair_rows(loaded, paths, options.intersect)
    rows = _statistics(pairs, options)
    info = {"a": str(paths[0]), "b": str(paths[1]), "convention": convention,
            "metrics": list(options.metrics), "better": {m: BETTER[m] for m in options.metrics},
            "n_pairs": len(pairs), "n_both_empty_left_out": n_both_empty,
            "n_unpaired_dropped": n_dropped, "policy": POLICY,
            "bootstrap": {"resamples": options.n_bootstrap, "seed": options.seed,
                          "level": LEVEL, "method": "percentile"}}
    return Comparison(rows, info, pairs)


def _check_compatible(loaded: tuple[Results, Results], paths: tuple[Path, Path],
                      metrics: Sequence[str]) -> str | None:
    """The shared convention; DataError for different conventions, labels or missing metrics."""
    both = f"{paths[0]} and {paths[1]}"
    conventions = [r.summary.get("convention") for r in loaded]
    if conventions[0] != conventions[1]:
        raise DataError(f"{both} use different conventions ({conventions[0]!r} and "
                        f"{conventions[1]!r}); evaluate both with the same --convention")
    if conventions[0] is None:
        log.warning("%s record no convention (no summary.json): assuming the same one", both)
    labels = [{r.label: r.label_name for r in res.rows} for res in loaded]
    named = [{k: v for k, v in lab.items() if v} for lab in labels]
    clash = sorted(k for k in set(named[0]) & set(named[1]) if named[0][k] != named[1][k])
    if set(labels[0]) != set(labels[1]) or clash:
        raise DataError(f"{both} have different label sets: {_labels_text(labels[0])} and "
                        f"{_labels_text(labels[1])}; compare evaluations of the same labels")
    for res, path in zip(loaded, paths):
        missing = [m for m in metrics if not any(m in r.metrics for r in res.rows)]
        if missing:
            raise DataError(f"no column {', '.join(missing)} (comparing {both})", path)
    return conventions[0]


def _labels_text(labels: dict[int, str]) -> str:
    return "{" + ", ".join(f"{k}: {v}" if v else str(k) for k, v in sorted(labels.items())) + "}"


def _pair_rows(loaded: tuple[Results, Results], paths: tuple[Path, Path], intersect: bool
               ) -> tuple[list[tuple[ResultRow, ResultRow]], int, int]:
    """(pairs, pairs left out as both_empty, unpaired rows dropped)."""
    keyed = [_by_key(res.rows, path) for res, path in zip(loaded, paths)]
    only = [[k for k in keyed[i] if k not in keyed[1 - i]] for i in (0, 1)]
    n_unpaired = len(only[0]) + len(only[1])
    if n_unpaired and not intersect:
        raise DataError(f"unpaired (case, label) rows: {_unpaired_text(only, paths)}; "
                        "compare the same cases, or pass --intersect to drop them")
    if n_unpaired:
        log.warning("--intersect: dropped %d unpaired rows (%s)", n_unpaired,
                    _unpaired_text(only, paths))
    pairs = [(row, keyed[1][key]) for key, row in keyed[0].items() if key in keyed[1]]
    kept = [(a, b) for a, b in pairs if not (a.status == b.status == "both_empty")]
    if not kept:
        raise DataError(f"{paths[0]} and {paths[1]} share no (case, label) pair to compare")
    return kept, len(pairs) - len(kept), n_unpaired


def _by_key(rows: list[ResultRow], path: Path) -> dict[tuple[str, int], ResultRow]:
    keyed: dict[tuple[str, int], ResultRow] = {}
    for row in rows:
        if (row.case, row.label) in keyed:
            raise DataError(f"case {row.case!r} has two rows for label {row.label}", path)
        keyed[(row.case, row.label)] = row
    return keyed


def _unpaired_text(only: list[list[tuple[str, int]]], paths: tuple[Path, Path]) -> str:
    parts = []
    for keys, path, other in ((only[0], paths[0], paths[1]), (only[1], paths[1], paths[0])):
        if keys:
            shown = ", ".join(f"({case}, {label})" for case, label in keys[:_SHOWN])
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} in {path} but not in {other}: {shown}{more}")
    return "; ".join(parts)


def _statistics(pairs: list[tuple[ResultRow, ResultRow]], options: CompareOptions
                ) -> list[dict[str, Any]]:
    """One row per label and metric (:data:`COMPARE_COLUMNS`), Holm across labels."""
    by_label: dict[int, list[tuple[ResultRow, ResultRow]]] = {}
    for a, b in pairs:
        by_label.setdefault(a.label, []).append((a, b))
    rows = []
    for index, metric in enumerate(options.metrics):
        block = []
        for label, group in sorted(by_label.items()):
            a = np.array([p[0].get(metric) for p in group], dtype=np.float64)
            b = np.array([p[1].get(metric) for p in group], dtype=np.float64)
            name = group[0][0].label_name or group[0][1].label_name
            stats = _paired_stats(a, b, BETTER[metric], [options.seed, label, index],
                                  options.n_bootstrap)
            block.append({"label": label, "label_name": name, "metric": metric,
                          "better": BETTER[metric], **stats})
        for row, p in zip(block, holm([r["p_value"] for r in block])):
            row["p_holm"] = p
        rows += [{c: row[c] for c in COMPARE_COLUMNS} for row in block]
    return rows


# -- printing ---------------------------------------------------------------------------------
def format_table(comparison: Comparison) -> str:
    """A plain-text table of the comparison, one line per label and metric."""
    info = comparison.info
    head = (f"{'metric':<8} {'label':<20} {'n':>4} {'inf':>3} {'mean A':>9} {'mean B':>9} "
            f"{'B - A':>9} {'95% CI':>21} {'p (Holm)':>9}  W/T/L")
    lines = [f"A = {info['a']}, B = {info['b']}: differences B - A, W/T/L = B better/tie/worse",
             f"inf: {POLICY['inf']}", head]
    for r in comparison.rows:
        name = f"{r['label']} {r['label_name']}".strip()[:20]
        ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        lines.append(f"{r['metric']:<8} {name:<20} {r['n_pairs']:>4} {r['n_nonfinite']:>3} "
                     f"{_num(r['mean_a']):>9} {_num(r['mean_b']):>9} {_num(r['mean_diff']):>9} "
                     f"{ci:>21} {_num(r['p_holm'], 'g'):>9}  {r['wins']}/{r['ties']}/{r['losses']}")
    return "\n".join(lines)


def _num(value: float, style: str = "f") -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3g}" if style == "g" else f"{value:.4f}"
