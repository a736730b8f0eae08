"""Read the per-case results table written by ``medseg evaluate`` and label-name files.

``results.csv`` has one row per (case, label) with the columns
``case,label,label_name,status,dice,iou,accuracy,hd_mm,hd95_mm,avd_mm,assd_mm,nsd,
vol_pred_ml,vol_gt_ml``. Only ``case``, ``label``, ``status`` and ``dice`` are
required; metric columns may be missing or empty (read as NaN). ``nan`` and
``inf`` are read as floats.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import ConfigError, DataError

__all__ = [
    "METRIC_COLUMNS",
    "STATUSES",
    "ResultRow",
    "read_results",
    "read_label_names",
    "resolve_label_names",
]

#: Metric columns of results.csv, in display order, with their table titles.
METRIC_COLUMNS: dict[str, str] = {
    "dice": "Dice",
    "iou": "IoU",
    "accuracy": "Accuracy",
    "hd_mm": "HD (mm)",
    "hd95_mm": "HD95 (mm)",
    "avd_mm": "AVD (mm)",
    "assd_mm": "ASSD (mm)",
    "nsd": "NSD",
    "vol_gt_ml": "Vol GT (mL)",
    "vol_pred_ml": "Vol pred (mL)",
}
STATUSES = ("ok", "empty_pred", "empty_gt", "both_empty")
_REQUIRED = ("case", "label", "status", "dice")


@dataclass(frozen=True)
class ResultRow:
    """One (case, label) row of results.csv; missing metrics are NaN."""

    case: str
    label: int
    label_name: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)

    def get(self, column: str) -> float:
        """The value of a metric column, NaN when the column is absent."""
        return self.metrics.get(column, math.nan)


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    """Read ``results.csv``; raise :class:`DataError` naming the file, line and column if bad."""
    path = Path(path)
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
                f"(expected at least {', '.join(_REQUIRED)})",
                path,
            )
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
        raise DataError(
            f"line {line}: unknown status {status!r}; expected one of {', '.join(STATUSES)}", path
        )
    metrics = {}
    for column in METRIC_COLUMNS:
        if column in raw:
            metrics[column] = _parse_float(raw[column], column, line, path)
    return ResultRow(case, label, (raw.get("label_name") or "").strip(), status, metrics)


def _parse_float(text: str | None, column: str, line: int, path: Path) -> float:
    text = (text or "").strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"line {line}: column {column!r} must be a number, nan or inf, got {text!r}", path
        ) from None


def read_label_names(path: str | os.PathLike) -> dict[int, str]:
    """Label value -> name from a JSON file.

    Accepted forms: ``{"1": "liver"}``, ``{"liver": 1}``, and an MSD
    ``dataset.json`` whose ``"labels"`` holds either form. Background (0) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("labels file does not exist", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"labels file is not valid JSON: {exc}", path) from exc
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            'expected a JSON object such as {"1": "liver"} or {"liver": 1}, or an MSD '
            'dataset.json with a "labels" object', path
        )
    names = {}
    for key, value in data.items():
        value_int, name = _label_pair(key, value, path)
        if value_int != 0:
            names[value_int] = name
    return names


def _label_pair(key: str, value: object, path: Path) -> tuple[int, str]:
    """(value, name) from one entry of either {"1": "liver"} or {"liver": 1}."""
    if str(key).strip().lstrip("-").isdigit() and isinstance(value, str):
        return int(key), value
    if isinstance(value, int) and not isinstance(value, bool):
        return value, str(key)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value), str(key)
    raise ConfigError(
        f"entry {key!r}: {value!r} is neither 'value': 'name' nor 'name': value", path
    )


def resolve_label_names(
    rows: list[ResultRow], labels: str | os.PathLike | Mapping[int, str] | None
) -> dict[int, str]:
    """Names of the labels in ``rows``: from ``labels`` first, then the label_name column."""
    given: Mapping[int, str] = {}
    if isinstance(labels, Mapping):
        given = {int(k): str(v) for k, v in labels.items()}
    elif labels is not None:
        given = read_label_names(labels)
    names = {}
    for row in rows:
        if row.label not in names or not names[row.label]:
            names[row.label] = given.get(row.label) or row.label_name
    return {k: (v or f"label {k}") for k, v in sorted(names.items())}
