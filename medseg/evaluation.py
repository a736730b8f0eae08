"""Evaluate prediction files against ground-truth files: per-case rows, CSV and summary.

:func:`evaluate_folders` pairs cases by file name, checks that each pair shares
its grid, scores every label with :func:`medseg.metrics.evaluate_arrays` (cases
in parallel processes) and writes, atomically and only once every case has
succeeded:

* ``results.csv`` (the ``out_csv`` path): one row per case x label, columns
  :data:`RESULT_COLUMNS`; NaN and infinity are written ``nan`` and ``inf``;
* ``summary.csv`` and ``summary.json`` beside it: per label and overall, for
  each metric the mean, std (population, ddof=0), median, min and max **over the
  finite values only**, ``n`` (how many finite values), ``n_nan`` and
  ``n_inf`` (how many were left out, so nothing vanishes silently), and the
  number of rows of each status (``ok``, ``empty_pred``, ``empty_gt``,
  ``both_empty``). Statistics of a metric with no finite value are empty in
  the CSV and ``null`` in the JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ConfigError, GeometryError, ImageReadError, UsageError
from medseg.metrics import METRIC_KEYS, STATUSES, check_label_array, evaluate_arrays

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "evaluate_folders",
    "evaluate_case",
    "pair_cases",
    "case_name",
    "load_label_names",
    "summarize",
]

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("case", "label", "label_name", "status") + METRIC_KEYS
SUMMARY_COLUMNS = (
    "label", "label_name", "metric", "mean", "std", "median", "min", "max", "n", "n_nan", "n_inf",
) + tuple(f"n_{s}" for s in STATUSES)
_STATS = ("mean", "std", "median", "min", "max")

Labels = str | os.PathLike | Mapping[int, str] | Sequence[int] | None


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    out_csv: str | os.PathLike,
    labels: Labels = None,
    convention: str = "medseg",
    nsd_tolerance_mm: float = 1.0,
    workers: int = 1,
    missing_as_empty: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score prediction files against ground-truth files and write CSV + summary.

    Parameters
    ----------
    pred, gt : two image files, or two folders whose images are paired by case
        name (file name without ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``...).
    out_csv : path of the per-row CSV; ``summary.csv`` and ``summary.json`` are
        written in the same folder.
    labels : a ``labels.json`` (``{"1": "liver"}``) or MSD ``dataset.json``
        path, a ``{label: name}`` mapping or a list of labels; default every
        non-zero label found in each case.
    convention, nsd_tolerance_mm : see :func:`medseg.metrics.evaluate_arrays`.
    workers : parallel processes (1 = in this process).
    missing_as_empty : score a ground truth without a prediction as an empty
        prediction instead of failing.

    Returns
    -------
    (rows, summary) : the rows written to ``out_csv`` (dicts with
        :data:`RESULT_COLUMNS`) and the summary written to ``summary.json``.

    Raises
    ------
    UsageError, ImageReadError
        Unpaired cases (all listed), missing paths, bad options.
    GeometryError, DataError
        A pair with different shape or affine, or non-integer / negative / NaN labels.
    """
    from medseg.metrics import get_convention

    get_convention(convention)
    if int(workers) < 1:
        raise UsageError(f"workers must be >= 1, got {workers!r}")
    names = _label_names(labels)
    wanted = None if names is None else [k for k in sorted(names) if k != 0]
    pairs = pair_cases(pred, gt, missing_as_empty)
    out_csv = Path(out_csv)
    from medseg.io.atomic import check_writable_dir

    check_writable_dir(out_csv)
    jobs = [(case, p, g, wanted, convention, nsd_tolerance_mm) for case, p, g in pairs]
    rows = [r for case_rows in _run(jobs, int(workers)) for r in case_rows]
    for row in rows:
        row["label_name"] = (names or {}).get(row["label"], "")
    summary = summarize(rows, names)
    summary.update(convention=convention, nsd_tolerance_mm=float(nsd_tolerance_mm), n_cases=len(pairs))
    _write_outputs(out_csv, rows, summary)
    return rows, summary


def evaluate_case(
    case: str,
    pred_path: str | os.PathLike | None,
    gt_path: str | os.PathLike,
    labels: Sequence[int] | None = None,
    convention: str = "medseg",
    nsd_tolerance_mm: float = 1.0,
) -> list[dict[str, Any]]:
    """Rows (one per label) of one case; ``pred_path=None`` scores an empty prediction."""
    from medseg.io import read_volume

    gt_vol = read_volume(gt_path, channels=False)
    gt = check_label_array(gt_vol.array, "ground truth", gt_path)
    if pred_path is None:
        pred = np.zeros_like(gt)
    else:
        pred_vol = read_volume(pred_path, channels=False)
        _check_same_grid(pred_vol, gt_vol, pred_path, gt_path)
        pred = check_label_array(pred_vol.array, "prediction", pred_path)
    if labels is not None:
        _warn_unlisted(case, pred, gt, labels)
    scores = evaluate_arrays(pred, gt, gt_vol.spacing_mm, labels, convention, nsd_tolerance_mm)
    return [
        {"case": case, "label": label, "label_name": "", "status": m["status"],
         **{k: m[k] for k in METRIC_KEYS}}
        for label, m in scores.items()
    ]


def _check_same_grid(pred_vol, gt_vol, pred_path, gt_path) -> None:
    if pred_vol.spatial_shape != gt_vol.spatial_shape:
        raise GeometryError(
            f"prediction has shape {pred_vol.spatial_shape} but ground truth {gt_path} has shape "
            f"{gt_vol.spatial_shape}",
            pred_path,
        )
    if not pred_vol.same_grid(gt_vol, tol_mm=1e-3):
        diff = float(np.abs(pred_vol.affine - gt_vol.affine).max())
        raise GeometryError(
            f"prediction affine differs from ground truth {gt_path} by up to {diff:.6g} mm "
            "(tolerance 0.001 mm); resample the prediction onto the ground-truth grid",
            pred_path,
        )


def _warn_unlisted(case: str, pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]) -> None:
    from medseg.metrics.evaluate import present_labels

    extra = sorted((set(present_labels(pred)) | set(present_labels(gt))) - set(labels))
    if extra:
        log.warning("%s: labels %s are not in the label list and are not scored", case, extra)


def _run_job(job: tuple) -> list[dict[str, Any]]:
    return evaluate_case(*job)


def _run(jobs: list[tuple], workers: int) -> list[list[dict[str, Any]]]:
    """Run the cases, in processes when ``workers > 1``, with a progress bar on a terminal."""
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not sys.stderr.isatty())
    if workers == 1 or len(jobs) < 2:
        return [_run_job(job) for job in tqdm(jobs, **bar)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(tqdm(pool.map(_run_job, jobs), **bar))


# -- pairing ----------------------------------------------------------------------
def case_name(path: str | os.PathLike) -> str:
    """File name without its image extension: ``case_001.nii.gz`` -> ``case_001``."""
    from medseg.io import SUPPORTED_EXTENSIONS

    name = Path(path).name
    for ext in SUPPORTED_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def pair_cases(
    pred: str | os.PathLike, gt: str | os.PathLike, missing_as_empty: bool = False
) -> list[tuple[str, Path | None, Path]]:
    """``(case, pred_path or None, gt_path)`` for two files or two folders paired by case name."""
    pred, gt = Path(pred), Path(gt)
    for path, what in ((pred, "prediction"), (gt, "ground truth")):
        if not path.exists():
            raise ImageReadError(f"{what} path does not exist", path)
    if pred.is_file() and gt.is_file():
        return [(case_name(gt), pred, gt)]
    if not (pred.is_dir() and gt.is_dir()):
        raise UsageError(f"--pred {pred} and --gt {gt} must be two files or two folders")
    preds, gts = _images_by_case(pred), _images_by_case(gt)
    if not gts:
        raise ImageReadError("ground-truth folder holds no image files", gt)
    no_gt = sorted(set(preds) - set(gts))
    no_pred = [] if missing_as_empty else sorted(set(gts) - set(preds))
    if no_gt or no_pred:
        parts = []
        if no_pred:
            parts.append(f"{len(no_pred)} without a prediction in {pred}: {', '.join(no_pred)}")
        if no_gt:
            parts.append(f"{len(no_gt)} without a ground truth in {gt}: {', '.join(no_gt)}")
        raise UsageError("unpaired cases: " + "; ".join(parts))
    for case in sorted(set(gts) - set(preds)):
        log.warning("%s: no prediction, scored as empty (--missing-as-empty)", case)
    return [(case, preds.get(case), gts[case]) for case in sorted(gts)]


def _images_by_case(folder: Path) -> dict[str, Path]:
    from medseg.io import is_image_path

    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_image_path(path):
            case = case_name(path)
            if case in found:
                raise UsageError(f"two images for case {case!r}: {found[case].name}, {path.name}", folder)
            found[case] = path
    return found


# -- label names ------------------------------------------------------------------
def load_label_names(path: str | os.PathLike) -> dict[int, str]:
    """``{label: name}`` from a labels.json map or an MSD dataset.json.

    Accepted: ``{"1": "liver", ...}``; or a dict whose ``"labels"`` is
    ``{"0": "background", "1": "liver"}`` or ``{"background": 0, "liver": 1}``.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImageReadError("labels file does not exist", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read labels file as JSON: {exc}", path) from None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            'expected {"1": "liver", ...} or a dataset.json with a "labels" map', path
        )
    names: dict[int, str] = {}
    for key, value in data.items():
        label, name = (key, value) if _is_int(key) else (value, key)
        if not _is_int(label) or int(label) < 0:
            raise ConfigError(f"label {label!r} (for {name!r}) is not a non-negative integer", path)
        names[int(label)] = str(name)
    return names


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().isdigit()


def _label_names(labels: Labels) -> dict[int, str] | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        return load_label_names(labels)
    if isinstance(labels, Mapping):
        return {int(k): str(v) for k, v in labels.items()}
    return {int(k): "" for k in labels}


# -- summary ----------------------------------------------------------------------
def summarize(rows: Iterable[dict[str, Any]], names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Per-label and overall statistics of ``rows`` (finite values only; see module doc)."""
    rows = list(rows)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["label"]), []).append(row)
    per_label = {
        key: _group_summary(group, (names or {}).get(int(key), group[0].get("label_name", "")))
        for key, group in sorted(groups.items(), key=lambda kv: int(kv[0]))
    }
    return {
        "inf_nan_policy": (
            "mean, std (ddof=0), median, min and max use finite values only; n counts them; "
            "n_nan and n_inf count the values left out; status counts say why"
        ),
        "labels": per_label,
        "overall": _group_summary(rows, "all"),
    }


def _group_summary(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    status = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
    metrics = {}
    for key in METRIC_KEYS:
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        finite = values[np.isfinite(values)]
        stats: dict[str, Any] = dict.fromkeys(_STATS)
        if finite.size:
            stats = dict(zip(_STATS, map(float, (
                finite.mean(), finite.std(), np.median(finite), finite.min(), finite.max()))))
        stats.update(n=int(finite.size), n_nan=int(np.isnan(values).sum()),
                     n_inf=int(np.isinf(values).sum()))
        metrics[key] = stats
    return {"label_name": name, "n_rows": len(rows), "status": status, "metrics": metrics}


# -- writing ----------------------------------------------------------------------
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
    groups = [(k, g) for k, g in summary["labels"].items()] + [("all", summary["overall"])]
    for label, group in groups:
        for metric, stats in group["metrics"].items():
            yield {"label": label, "label_name": group["label_name"], "metric": metric, **stats,
                   **{f"n_{s}": n for s, n in group["status"].items()}}


def _write_outputs(out_csv: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from medseg.io.atomic import atomic_write_text

    folder = out_csv.parent
    texts = {
        out_csv: _csv_text(RESULT_COLUMNS, rows),
        folder / "summary.csv": _csv_text(SUMMARY_COLUMNS, _summary_rows(summary)),
        folder / "summary.json": json.dumps(summary, indent=2, allow_nan=False) + "\n",
    }
    for path, text in texts.items():
        atomic_write_text(path, text)
    log.info("wrote %s (%d rows), summary.csv and summary.json", out_csv, len(rows))

