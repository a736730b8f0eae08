"""Evaluation results: written once by ``medseg evaluate``, loaded by the report and comparisons.

A :class:`Results` is the per-case rows and their summary. On disk it is three
files in one folder, written atomically by :meth:`Results.write`:

* ``results.csv``: one row per case x label, columns :data:`RESULT_COLUMNS`
  (``case, label, label_name, status`` and the metrics of
  :data:`medseg.metrics.METRIC_KEYS`); NaN and infinity are written ``nan``
  and ``inf``;
* ``summary.json``: the output of :func:`summarize` plus what the evaluation
  records (``convention``, ``nsd_tolerance_mm``, ``n_cases``);
* ``summary.csv``: the statistics of ``summary.json`` as a table, columns
  :data:`SUMMARY_COLUMNS`: one row per label and metric, then ``all`` (over the
  counted rows) and ``all_cases`` (over the per-case means; ``n`` counts cases).

Statistics: per label and overall, for each metric the mean, std
(population, ddof=0), median, min and max **over the finite values only**,
``n`` (how many finite values), ``n_nan`` and ``n_inf`` (how many were left
out, so nothing vanishes silently), and the number of rows of each status
(:data:`medseg.metrics.STATUSES`). Statistics of a metric without any finite
value are ``null`` in the JSON and empty in the CSV.

Which rows count (``summary["both_empty_policy"]`` states it in one line):

* ``both_empty`` rows (the label is in neither mask) are left out of every
  statistic by default: they stay in ``results.csv``, in ``n_rows`` and in
  the ``both_empty`` status count, but reward nothing (nnU-Net and MONAI leave
  them out as NaN too). ``include_both_empty=True`` counts them with their
  convention's values (medseg: Dice 1), as medseg did before;
* ``empty_pred`` and ``empty_gt`` rows always count with their convention's
  values: a missed structure is Dice 0 (``medseg``), never hidden.

Each group also has ``n_counted``, the rows its statistics are over. The
overall figure is given two ways: ``summary["overall"]["metrics"]`` over the
counted (case, label) rows, and ``summary["overall"]["case_mean"]`` over the
cases, each case weighing one (its mean over its counted rows' finite values;
``n`` counts the cases that have one). ``summary["cases"]`` holds each case's
mean finite Dice (``null`` when it has none), which ranks the worst cases.

Volume agreement (``summary["labels"][k]["volume_agreement"]``, see
:func:`medseg.agreement.volume_agreement`): Bland-Altman bias and 95 % limits of agreement of
the predicted minus the true volume (mL) and Pearson's r, over the rows where
the label is in either mask (status ``ok``, ``empty_pred`` or ``empty_gt``)
whatever the both-empty policy.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.agreement import volume_agreement
from medseg.errors import DataError
from medseg.metrics import METRIC_KEYS, STATUSES

__all__ = ["RESULT_COLUMNS", "SUMMARY_COLUMNS", "ResultRow", "Results", "csv_text", "summarize"]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("case", "label", "label_name", "status") + METRIC_KEYS
SUMMARY_COLUMNS = (
    "label", "label_name", "metric", "mean", "std", "median", "min", "max", "n", "n_nan", "n_inf",
) + tuple(f"n_{s}" for s in STATUSES)
_STATS = ("mean", "std", "median", "min", "max")
_REQUIRED = ("case", "label", "status", "dice")
_POLICY = ("mean, std (ddof=0), median, min and max use finite values only; n counts them; "
           "n_nan and n_inf count the values left out; status counts say why")
_BOTH_EMPTY_LEFT_OUT = (
    "both_empty rows (label in neither mask) are left out of every statistic and counted in "
    "status.both_empty; empty_pred/empty_gt rows count with the convention's values "
    "(medseg: Dice 0)")
_BOTH_EMPTY_INCLUDED = (
    "both_empty rows (label in neither mask) count with the convention's values (medseg: "
    "Dice 1, distances 0) (include_both_empty); empty_pred/empty_gt rows count with the "
    "convention's values (medseg: Dice 0)")
_AGREEMENT_ROWS = (
    "volume_agreement uses the rows where the label is in either mask (status ok, empty_pred, "
    "empty_gt); bias = mean(pred - true) mL, limits = bias -/+ 1.96 SD (ddof=1), Pearson r")


@dataclass(frozen=True)
class ResultRow:
    """One (case, label) row of results.csv; ``metrics`` maps metric keys to values."""

    case: str
    label: int
    label_name: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)

    def get(self, metric: str) -> float:
        """The value of ``metric``, NaN when the row does not have it."""
        return self.metrics.get(metric, math.nan)

    def as_dict(self) -> dict[str, Any]:
        """The row as ``{column: value}`` with every column of :data:`RESULT_COLUMNS`."""
        return {"case": self.case, "label": self.label, "label_name": self.label_name,
                "status": self.status, **{k: self.get(k) for k in METRIC_KEYS}}


# -- statistics -------------------------------------------------------------------------------
def summarize(rows: Iterable[ResultRow], names: Mapping[int, str] | None = None, *,
              include_both_empty: bool = False) -> dict[str, Any]:
    """Per-label, overall and per-case statistics of ``rows`` (see the module docstring).

    Parameters
    ----------
    rows : the (case, label) rows.
    names : label -> name; default the rows' ``label_name``.
    include_both_empty : count ``both_empty`` rows in the statistics with their
        convention's values (default False: left out, and counted by status).

    Returns
    -------
    dict
        ``both_empty_policy``, ``inf_nan_policy``, ``volume_agreement_rows`` (one
        line each), ``labels`` (label -> group), ``overall`` (a group plus
        ``case_mean``) and ``cases`` (case -> mean Dice or None).
    """
    rows = list(rows)
    groups: dict[int, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(row.label, []).append(row)
    per_label = {
        str(label): {
            **_group_summary(group, (names or {}).get(label, group[0].label_name),
                             include_both_empty),
            "volume_agreement": _label_volume_agreement(group),
        }
        for label, group in sorted(groups.items())
    }
    case_means = _case_means(rows, include_both_empty)
    overall = {**_group_summary(rows, "all", include_both_empty),
               "case_mean": {key: _finite_stats(np.array(list(means.values())))
                             for key, means in case_means.items()}}
    return {
        "both_empty_policy": _BOTH_EMPTY_INCLUDED if include_both_empty else _BOTH_EMPTY_LEFT_OUT,
        "inf_nan_policy": _POLICY, "volume_agreement_rows": _AGREEMENT_ROWS,
        "labels": per_label, "overall": overall,
        "cases": {case: _none_if_nan(mean) for case, mean in case_means["dice"].items()},
    }


def _counted(rows: list[ResultRow], include_both_empty: bool) -> list[ResultRow]:
    """The rows that enter the statistics under the both-empty policy."""
    return rows if include_both_empty else [r for r in rows if r.status != "both_empty"]


def _finite_stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = dict.fromkeys(_STATS)
    if finite.size:
        stats = dict(zip(_STATS, map(float, (
            finite.mean(), finite.std(), np.median(finite), finite.min(), finite.max()))))
    stats.update(n=int(finite.size), n_nan=int(np.isnan(values).sum()),
                 n_inf=int(np.isinf(values).sum()))
    return stats


def _group_summary(rows: list[ResultRow], name: str, include_both_empty: bool
                   ) -> dict[str, Any]:
    status = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    counted = _counted(rows, include_both_empty)
    metrics = {key: _finite_stats(np.array([r.get(key) for r in counted], dtype=np.float64))
               for key in METRIC_KEYS}
    return {"label_name": name, "n_rows": len(rows), "n_counted": len(counted), "status": status,
            "metrics": metrics}


def _case_means(rows: list[ResultRow], include_both_empty: bool) -> dict[str, dict[str, float]]:
    """``{metric: {case: mean}}``: each case's mean of the finite values of its counted rows.

    Every case of ``rows`` is there, in first-seen order; NaN when it has no finite value.
    """
    by_case: dict[str, list[ResultRow]] = {row.case: [] for row in rows}
    for row in _counted(rows, include_both_empty):
        by_case[row.case].append(row)
    return {key: {case: _finite_mean([r.get(key) for r in group])
                  for case, group in by_case.items()} for key in METRIC_KEYS}


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _label_volume_agreement(rows: list[ResultRow]) -> dict[str, Any]:
    present = [r for r in rows if r.status != "both_empty"]
    return volume_agreement([r.get("vol_pred_ml") for r in present],
                            [r.get("vol_gt_ml") for r in present])


# -- the results object ------------------------------------------------------------------------
@dataclass
class Results:
    """The rows of an evaluation and their summary (see the module docstring)."""

    rows: list[ResultRow]
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read ``results.csv`` (or the folder holding it) and the ``summary.json`` beside it.

        Without a ``summary.json`` (or with one of other rows, or one written
        before the both-empty policy) the summary is computed by :func:`summarize`
        with its default policy.

        Raises
        ------
        DataError
            Missing file or column, unknown status, non-numeric value (names
            the file, line and column).
        """
        path = Path(path)
        csv_path = path / "results.csv" if path.is_dir() else path
        rows = _read_rows(csv_path)
        return cls(rows, _load_summary(csv_path, rows))

    def write(self, out_csv: str | os.PathLike) -> Path:
        """Write ``out_csv``, then ``summary.csv`` and ``summary.json`` beside it, atomically.

        The folder is created when missing. Returns ``out_csv``.
        """
        from medseg.io.atomic import atomic_write_text, ensure_parent

        out_csv = Path(out_csv)
        folder = ensure_parent(out_csv)
        texts = {
            out_csv: csv_text(RESULT_COLUMNS, (r.as_dict() for r in self.rows)),
            folder / "summary.csv": csv_text(SUMMARY_COLUMNS, _summary_rows(self.summary)),
            folder / "summary.json": json.dumps(self.summary, indent=2, allow_nan=False) + "\n",
        }
        for target, text in texts.items():
            atomic_write_text(target, text)
        log.info("wrote %s (%d rows), summary.csv and summary.json", out_csv, len(self.rows))
        return out_csv

    def worst_cases(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` cases of lowest mean Dice, worst first; cases without any Dice go last."""
        means = {case: math.nan if d is None else float(d)
                 for case, d in self.summary["cases"].items()}
        ranked = sorted(means.items(), key=lambda kv: (math.isnan(kv[1]), kv[1], kv[0]))
        return ranked[: max(0, n)]


# -- reading ----------------------------------------------------------------------------------
def _read_rows(path: Path) -> list[ResultRow]:
    if not path.is_file():
        raise DataError("results file does not exist (expected the results.csv of "
                        "'medseg evaluate')", path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            raise DataError(
                f"missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'} "
                f"(expected at least {', '.join(_REQUIRED)})", path)
        rows = [_parse_row(raw, line, path) for line, raw in enumerate(reader, start=2)]
    if not rows:
        raise DataError("results file has a header but no rows", path)
    return rows


def _parse_row(raw: dict[str, str | None], line: int, path: Path) -> ResultRow:
    case = (raw.get("case") or "").strip()
    if not case:
        raise DataError(f"line {line}: empty 'case'", path)
    try:
        label = int((raw.get("label") or "").strip())
    except ValueError:
        raise DataError(f"line {line}: 'label' must be an integer, got {raw.get('label')!r}",
                        path) from None
    status = (raw.get("status") or "").strip()
    if status not in STATUSES:
        raise DataError(f"line {line}: unknown status {status!r}; expected one of "
                        f"{', '.join(STATUSES)}", path)
    metrics = {key: _parse_float(raw[key], key, line, path) for key in METRIC_KEYS if key in raw}
    return ResultRow(case, label, (raw.get("label_name") or "").strip(), status, metrics)


def _parse_float(text: str | None, column: str, line: int, path: Path) -> float:
    text = (text or "").strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"line {line}: column {column!r} must be a number, nan or inf, got "
                        f"{text!r}", path) from None


def _load_summary(csv_path: Path, rows: list[ResultRow]) -> dict[str, Any]:
    """The ``summary.json`` beside ``csv_path`` when it describes ``rows``, else summarize them."""
    path = csv_path.with_name("summary.json")
    if not path.is_file():
        return summarize(rows)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"summary file is not valid JSON: {exc}", path) from None
    cases = list(dict.fromkeys(r.case for r in rows))
    if (not isinstance(loaded, dict) or list(loaded.get("cases") or {}) != cases
            or loaded.get("overall", {}).get("n_rows") != len(rows)
            or "both_empty_policy" not in loaded):
        log.warning("%s does not describe the rows of %s (another evaluation's, or an older "
                    "medseg's): summarizing the rows instead", path, csv_path.name)
        return summarize(rows)
    return loaded


# -- writing ----------------------------------------------------------------------------------
def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    return "" if value is None else str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of ``rows`` in ``columns`` order: floats exact (``repr``), NaN and infinity
    written ``nan``/``inf``/``-inf``, None as empty; the one CSV writer of results, lesions,
    comparisons and statistics."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in columns])
    return buffer.getvalue()


def _summary_rows(summary: dict[str, Any]) -> Iterable[dict[str, Any]]:
    overall = summary["overall"]
    groups = [*((label, g, g["metrics"]) for label, g in summary["labels"].items()),
              ("all", overall, overall["metrics"]), ("all_cases", overall, overall["case_mean"])]
    for label, group, metrics in groups:
        for metric, stats in metrics.items():
            yield {"label": label, "label_name": group["label_name"], "metric": metric, **stats,
                   **{f"n_{s}": n for s, n in group["status"].items()}}
