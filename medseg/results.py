"""Evaluation results: written once by ``medseg evaluate``, loaded by the report and comparisons.

A :class:`Results` is the per-case rows and their summary. On disk it is three
files in one folder, written atomically by :meth:`Results.write`:

* ``results.csv``: one row per case x label, columns :data:`RESULT_COLUMNS`
  (``case, label, label_name, status`` and the metrics of
  :data:`medseg.metrics.METRIC_KEYS`); NaN and infinity are written ``nan``
  and ``inf``;
* ``summary.json``: the output of :func:`summarize` plus what the evaluation
  records (``convention``, ``nsd_tolerance_mm``, ``n_cases``);
* ``summary.csv``: the per-label statistics of ``summary.json`` as a table,
  columns :data:`SUMMARY_COLUMNS`.

Statistics: per label and overall, for each metric the mean, std
(population, ddof=0), median, min and max **over the finite values only**,
``n`` (how many finite values), ``n_nan`` and ``n_inf`` (how many were left
out, so nothing vanishes silently), and the number of rows of each status
(:data:`medseg.metrics.STATUSES`). Statistics of a metric without any finite
value are ``null`` in the JSON and empty in the CSV. ``summary["cases"]``
holds each case's mean finite Dice (``null`` when it has none), which ranks
the worst cases.
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

from medseg.errors import DataError
from medseg.metrics import METRIC_KEYS, STATUSES

__all__ = ["RESULT_COLUMNS", "SUMMARY_COLUMNS", "ResultRow", "Results", "summarize"]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("case", "label", "label_name", "status") + METRIC_KEYS
SUMMARY_COLUMNS = (
    "label", "label_name", "metric", "mean", "std", "median", "min", "max", "n", "n_nan", "n_inf",
) + tuple(f"n_{s}" for s in STATUSES)
_STATS = ("mean", "std", "median", "min", "max")
_REQUIRED = ("case", "label", "status", "dice")
_POLICY = ("mean, std (ddof=0), median, min and max use finite values only; n counts them; "
           "n_nan and n_inf count the values left out; status counts say why")


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
def summarize(rows: Iterable[ResultRow], names: Mapping[int, str] | None = None
              ) -> dict[str, Any]:
    """Per-label, overall and per-case statistics of ``rows`` (see the module docstring).

    ``names`` (label -> name) names the labels; default the rows' ``label_name``.
    """
    rows = list(rows)
    groups: dict[int, list[ResultRow]] = {}
    for row in rows:
        groups.setdefault(row.label, []).append(row)
    per_label = {
        str(label): _group_summary(group, (names or {}).get(label, group[0].label_name))
        for label, group in sorted(groups.items())
    }
    return {"inf_nan_policy": _POLICY, "labels": per_label,
            "overall": _group_summary(rows, "all"), "cases": _case_mean_dice(rows)}


def _finite_stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = dict.fromkeys(_STATS)
    if finite.size:
        stats = dict(zip(_STATS, map(float, (
            finite.mean(), finite.std(), np.median(finite), finite.min(), finite.max()))))
    stats.update(n=int(finite.size), n_nan=int(np.isnan(values).sum()),
                 n_inf=int(np.isinf(values).sum()))
    return stats


def _group_summary(rows: list[ResultRow], name: str) -> dict[str, Any]:
    status = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    metrics = {key: _finite_stats(np.array([r.get(key) for r in rows], dtype=np.float64))
               for key in METRIC_KEYS}
    return {"label_name": name, "n_rows": len(rows), "status": status, "metrics": metrics}


def _case_mean_dice(rows: list[ResultRow]) -> dict[str, float | None]:
    """Mean of each case's finite Dice values (None when it has none), in first-seen order."""
    dice: dict[str, list[float]] = {}
    for row in rows:
        dice.setdefault(row.case, []).append(row.get("dice"))
    return {case: _finite_stats(np.array(values, dtype=np.float64))["mean"]
            for case, values in dice.items()}


# -- the results object ------------------------------------------------------------------------
@dataclass
class Results:
    """The rows of an evaluation and their summary (see the module docstring)."""

    rows: list[ResultRow]
    summary: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read ``results.csv`` (or the folder holding it) and the ``summary.json`` beside it.

        Without a ``summary.json`` (or with one of other rows) the summary is
        computed by :func:`summarize`.

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
            out_csv: _csv_text(RESULT_COLUMNS, (r.as_dict() for r in self.rows)),
            folder / "summary.csv": _csv_text(SUMMARY_COLUMNS, _summary_rows(self.summary)),
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
            or loaded.get("overall", {}).get("n_rows") != len(rows)):
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


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in columns])
    return buffer.getvalue()


def _summary_rows(summary: dict[str, Any]) -> Iterable[dict[str, Any]]:
    groups = [*summary["labels"].items(), ("all", summary["overall"])]
    for label, group in groups:
        for metric, stats in group["metrics"].items():
            yield {"label": label, "label_name": group["label_name"], "metric": metric, **stats,
                   **{f"n_{s}": n for s, n in group["status"].items()}}
