"""Evaluate prediction files against ground-truth files: per-case rows, CSV and summary.

:func:`evaluate_folders` pairs cases by case name (:func:`medseg.io.cases.case_name`),
checks that each pair shares its grid, scores every label with
:func:`medseg.metrics.evaluate_arrays` (cases in parallel processes) and, only
once every case has succeeded, writes the :class:`medseg.results.Results`:
``results.csv`` (the ``out_csv`` path), ``summary.csv`` and ``summary.json``
beside it (columns and statistics: :mod:`medseg.results`). The output folder
is created when missing.

With ``lesions=LesionOptions(...)`` the listed labels are also scored lesion
by lesion (:mod:`medseg.metrics.lesions`): ``lesions.csv`` beside the results
(:data:`LESION_COLUMNS`, one row per true lesion and per unmatched predicted
lesion) and ``summary["lesions"]`` (:func:`summarize_lesions`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError, GeometryError, ImageReadError, UsageError, check_keywords
from medseg.io.cases import case_name, label_names_of, pair_folders
from medseg.metrics import METRIC_KEYS, check_label_array, evaluate_arrays
from medseg.metrics.lesions import LabelLesions, LesionCounts, LesionOptions
from medseg.results import RESULT_COLUMNS, SUMMARY_COLUMNS, ResultRow, Results, summarize

__all__ = [
    "RESULT_COLUMNS", "SUMMARY_COLUMNS", "LESION_COLUMNS", "EvaluateOptions", "LesionOptions",
    "evaluate_folders", "evaluate_case", "evaluate_reliability", "read_qc_table",
    "evaluate_case_lesions", "pair_cases",
    "summarize_lesions",
]

log = logging.getLogger(__name__)

Labels = str | os.PathLike | Mapping[int, str] | Sequence[int] | None


@dataclass(frozen=True)
class EvaluateOptions:
    """How :func:`evaluate_folders` scores the cases and summarizes the rows.

    Attributes
    ----------
    convention, nsd_tolerance_mm : see :func:`medseg.metrics.evaluate_arrays`
        (``nsd_tolerance_mm`` in mm).
    workers : parallel processes (1 = in this process).
    missing_as_empty : score a ground truth without a prediction as an empty
        prediction instead of failing.
    include_both_empty : count ``both_empty`` rows (label in neither mask) in the
        summary statistics with the convention's values, as medseg did before;
        default False: left out and counted (:func:`medseg.results.summarize`).
    lesions : also score these labels lesion-wise (``lesions.csv`` beside the results
        and ``summary["lesions"]``); default None (no lesion-wise scoring).
    reference : the DICOM series a DICOM-SEG / RTSTRUCT prediction or ground truth was
        drawn on (:func:`medseg.io.labels.read_labels`); not needed for image files.
    """

    convention: str = "medseg"
    nsd_tolerance_mm: float = 1.0
    workers: int = 1
    missing_as_empty: bool = False
    include_both_empty: bool = False
    lesions: LesionOptions | None = None
    reference: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        from medseg.metrics import get_convention

        get_convention(self.convention)
        if int(self.workers) < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers!r}")

    def replace(self, **changes: Any) -> EvaluateOptions:
        """A copy with ``changes`` (field names of this class) applied."""
        check_keywords(changes, [f.name for f in dataclasses.fields(self)], "evaluate_folders")
        return dataclasses.replace(self, **changes)


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    out_csv: str | os.PathLike,
    labels: Labels = None,
    options: EvaluateOptions | None = None,
    **settings: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score prediction files against ground-truth files and write CSV + summary.

    Parameters
    ----------
    pred, gt : two image files, or two folders whose images are paired by case
        name (file name without its extension: ``.nii.gz``, ``.nii``, ``.nrrd``,
        ``.nhdr``, ``.mha``, ``.mhd``).
    out_csv : path of the per-row CSV; ``summary.csv`` and ``summary.json`` are
        written in the same folder (created when missing).
    labels : a label-name file (:func:`medseg.io.cases.read_label_names`), a
        ``{label: name}`` mapping or a list of labels; the non-zero ones are
        scored. Default: every non-zero label found in each case.
    options : :class:`EvaluateOptions` (default: its defaults).
    **settings : fields of :class:`EvaluateOptions` as keywords, applied over
        ``options`` (``convention=``, ``nsd_tolerance_mm=``, ``workers=``,
        ``missing_as_empty=``, ``include_both_empty=``, ``lesions=``); any other name is a
        UsageError.

    Returns
    -------
    (rows, summary) : the rows written to ``out_csv`` (dicts with
        :data:`RESULT_COLUMNS`) and the summary written to ``summary.json``.

    Raises
    ------
    UsageError, ImageReadError
        Unpaired cases (all listed), missing paths, bad options (an instance
        label that is neither a positive integer nor a known name).
    GeometryError, DataError
        A pair with different shape or affine, or non-integer / negative / NaN labels.
    """
    opts = _options(options).replace(**settings)
    names = label_names_of(labels)
    wanted = None if names is None else [k for k in sorted(names) if k != 0]
    lesions = opts.lesions
    lesion_job = None if lesions is None else (lesions.resolve(names), lesions)
    pairs = pair_cases(pred, gt, opts.missing_as_empty)
    from medseg.io.atomic import check_parent

    check_parent(out_csv)  # fail before scoring when the output cannot be written
    jobs = [(case, p, g, wanted, opts.convention, opts.nsd_tolerance_mm, opts.reference,
             lesion_job) for case, p, g in pairs]
    done = _run(jobs, int(opts.workers))
    rows = [dataclasses.replace(r, label_name=(names or {}).get(r.label, ""))
            for case_rows, _ in done for r in case_rows]
    summary = summarize(rows, names, include_both_empty=opts.include_both_empty)
    summary.update(convention=opts.convention, nsd_tolerance_mm=float(opts.nsd_tolerance_mm),
                   n_cases=len(pairs))
    if lesions is not None:
        by_case = {case: found for (case, _, _), (_, found) in zip(pairs, done)}
        summary["lesions"] = _write_lesions(out_csv, by_case, names, lesions)
    Results(rows, summary).write(out_csv)
    return [r.as_dict() for r in rows], summary


def _options(options: EvaluateOptions | None) -> EvaluateOptions:
    if options is None:
        return EvaluateOptions()
    if not isinstance(options, EvaluateOptions):
        raise UsageError(f"options must be an EvaluateOptions, got {type(options).__name__} "
                         f"{options!r} (give convention= etc. as keywords)")
    return options


def evaluate_case(
    case: str,
    pred_path: str | os.PathLike | None,
    gt_path: str | os.PathLike,
    labels: Sequence[int] | None = None,
    convention: str = "medseg",
    nsd_tolerance_mm: float = 1.0,
) -> list[ResultRow]:
    """Rows (one per label, no label name yet) of one case; ``pred_path=None``: empty prediction."""
    pred, gt, gt_vol = _read_case(pred_path, gt_path)
    return _score_case(case, pred, gt, gt_vol, labels, convention, nsd_tolerance_mm)


def evaluate_case_lesions(
    pred_path: str | os.PathLike | None,
    gt_path: str | os.PathLike,
    labels: Sequence[int],
    options: LesionOptions,
) -> dict[int, LabelLesions]:
    """Lesions of each of ``labels`` in one case (``options``: connectivity and match rule)."""
    pred, gt, gt_vol = _read_case(pred_path, gt_path)
    return _case_lesions(pred, gt, gt_vol, labels, options)


def _read_case(pred_path, gt_path, reference=None) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(pred, gt, gt volume)`` checked integer label maps on one grid; no pred: zeros.

    A DICOM-SEG / RTSTRUCT is placed on the ``reference`` series' grid
    (:func:`medseg.io.labels.read_labels`); image files are read as they are.
    """
    gt_vol = _read_label_file(gt_path, reference)
    gt = check_label_array(gt_vol.array, "ground truth", gt_path)
    if pred_path is None:
        return np.zeros_like(gt), gt, gt_vol
    pred_vol = _read_label_file(pred_path, reference)
    _check_same_grid(pred_vol, gt_vol, pred_path, gt_path)
    return check_label_array(pred_vol.array, "prediction", pred_path), gt, gt_vol


def _read_label_file(path, reference):
    from medseg.io import read_volume
    from medseg.io.labels import is_dicom_labels, read_labels

    if is_dicom_labels(path):
        return read_labels(path, reference)
    return read_volume(path, channels=False)


def _score_case(case, pred, gt, gt_vol, labels, convention, nsd_tolerance_mm) -> list[ResultRow]:
    if labels is not None:
        _warn_unlisted(case, pred, gt, labels)
    scores = evaluate_arrays(pred, gt, gt_vol.spacing_mm, labels, convention, nsd_tolerance_mm)
    return [ResultRow(case, label, "", m["status"], {k: m[k] for k in METRIC_KEYS})
            for label, m in scores.items()]


def _case_lesions(pred, gt, gt_vol, labels, options: LesionOptions) -> dict[int, LabelLesions]:
    from medseg.metrics.lesions import lesion_metrics

    return lesion_metrics(pred, gt, gt_vol.affine, labels, options.connectivity, options.match)


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


def _run_job(job: tuple) -> tuple[list[ResultRow], dict[int, LabelLesions]]:
    """Rows of one case and, with a lesion job ``(labels, options)``, its lesions (one read)."""
    *case_job, reference, lesion_job = job
    case, pred_path, gt_path = case_job[:3]
    pred, gt, gt_vol = _read_case(pred_path, gt_path, reference)
    rows = _score_case(case, pred, gt, gt_vol, *case_job[3:])
    if lesion_job is None:
        return rows, {}
    return rows, _case_lesions(pred, gt, gt_vol, *lesion_job)


def _run(jobs: list[tuple], workers: int) -> list[tuple[list[ResultRow], dict]]:
    """Run the cases, in processes when ``workers > 1``, with a progress bar on a terminal."""
    from tqdm import tqdm

    bar = dict(total=len(jobs), desc="evaluate", unit="case", disable=not sys.stderr.isatty())
    if workers == 1 or len(jobs) < 2:
        return [_run_job(job) for job in tqdm(jobs, **bar)]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(tqdm(pool.map(_run_job, jobs), **bar))


# -- pairing ----------------------------------------------------------------------
def pair_cases(
    pred: str | os.PathLike, gt: str | os.PathLike, missing_as_empty: bool = False
) -> list[tuple[str, Path | None, Path]]:
    """``(case, pred_path or None, gt_path)`` for two files or two folders paired by case name;
    the probabilities and uncertainty maps ``medseg predict`` writes beside its label maps
    are not predictions (:data:`medseg.io.cases.SIDE_OUTPUTS`)."""
    pred, gt = Path(pred), Path(gt)
    for path, what in ((pred, "prediction"), (gt, "ground truth")):
        if not path.exists():
            raise ImageReadError(f"{what} path does not exist", path)
    if pred.is_file() and gt.is_file():
        return [(case_name(gt), pred, gt)]
    if not (pred.is_dir() and gt.is_dir()):
        raise UsageError(f"--pred {pred} and --gt {gt} must be two files or two folders")
    pairs = pair_folders(pred, gt, ("a prediction", "a ground truth"),
                         missing_first=missing_as_empty, predictions=True)
    for case, _, _ in (p for p in pairs if p[1] is None):
        log.warning("%s: no prediction, scored as empty (--missing-as-empty)", case)
    return pairs


# -- label names ------------------------------------------------------------------
# -- lesion-wise outputs ----------------------------------------------------------------
#: Columns of ``lesions.csv`` (see :class:`medseg.metrics.lesions.Lesion`).
LESION_COLUMNS = ("case", "label", "label_name", "lesion_id", "kind", "volume_ml", "partner_id",
                  "partner_volume_ml", "dice", "iou", "distance_mm")
_CASE_MEAN_KEYS = ("lesion_dice", "f1", "pq")
_LESION_POLICY = ("per label: tp, fp, fn and the ratios from them pooled over all cases "
                  "(matching is per case); case_mean: mean of each case's value over the cases "
                  "with a lesion in either map (cases without any are counted, not scored)")


def summarize_lesions(
    by_case: Mapping[str, Mapping[int, LabelLesions]],
    names: Mapping[int, str] | None = None,
    options: LesionOptions | None = None,
) -> dict[str, Any]:
    """``summary["lesions"]``: per label the pooled counts and metrics, and the mean over cases.

    Parameters
    ----------
    by_case : ``{case: {label: LabelLesions}}`` (:func:`evaluate_case_lesions`).
    names : label -> name.
    options : recorded (connectivity, match rule) when given.

    Returns
    -------
    ``{"policy", "connectivity", "match", "labels": {"<label>": {"label_name", "n_cases",
    "n_cases_without_lesions", "tp", "fp", "fn", "precision", "recall", "f1",
    "lesion_dice", "sq", "rq", "pq", "case_mean": {"lesion_dice", "f1", "pq", "n"}}}}``;
    undefined values (NaN) are None.
    """
    per_label: dict[int, list[LesionCounts]] = {}
    for found in by_case.values():
        for label, lesions in found.items():
            per_label.setdefault(label, []).append(lesions.counts)
    labels = {str(k): _label_summary(v, (names or {}).get(k, "")) for k, v in
              sorted(per_label.items())}
    out: dict[str, Any] = {"policy": _LESION_POLICY}
    if options is not None:
        out.update(connectivity=options.connectivity, match=str(options.rule))
    return {**out, "labels": labels}


def _label_summary(cases: list[LesionCounts], name: str) -> dict[str, Any]:
    pooled = sum(cases, LesionCounts())
    scored = [c.metrics() for c in cases if c.tp + c.fp + c.fn]
    case_mean = {k: _mean([m[k] for m in scored]) for k in _CASE_MEAN_KEYS}
    return {"label_name": name, "n_cases": len(cases),
            "n_cases_without_lesions": len(cases) - len(scored),
            "tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn,
            **{k: _json_number(v) for k, v in pooled.metrics().items()},
            "case_mean": {**case_mean, "n": len(scored)}}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return _json_number(float(np.mean(finite))) if finite else None


def _json_number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _lesion_rows(by_case: Mapping[str, Mapping[int, LabelLesions]],
                 names: Mapping[int, str] | None) -> list[dict[str, Any]]:
    """The rows of ``lesions.csv``: cases in order, labels ascending, lesions in their order."""
    return [{"case": case, "label": label, "label_name": (names or {}).get(label, ""),
             **dataclasses.asdict(lesion)}
            for case, found in by_case.items() for label, lesions in sorted(found.items())
            for lesion in lesions.lesions]


def _write_lesions(out_csv: str | os.PathLike, by_case: Mapping[str, Mapping[int, LabelLesions]],
                   names: Mapping[int, str] | None, options: LesionOptions) -> dict[str, Any]:
    """Write ``lesions.csv`` beside ``out_csv`` (atomically); return ``summary["lesions"]``."""
    from medseg.io.atomic import atomic_write_text
    from medseg.results import csv_text

    rows = _lesion_rows(by_case, names)
    path = Path(out_csv).with_name("lesions.csv")
    atomic_write_text(path, csv_text(LESION_COLUMNS, rows))
    log.info("wrote %s (%d lesions)", path, len(rows))
    return summarize_lesions(by_case, names, options)


# -- QC against the truth -------------------------------------------------------------------
def read_qc_table(qc_csv: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``medseg predict --qc``'s table (column -> text).

    Raises
    ------
    ImageReadError : the file cannot be read. DataError : a column QC needs is missing.
    """
    import csv

    path = Path(qc_csv)
    try:
        with path.open(newline="") as handle:
            table = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImageReadError(f"cannot read the QC table: {getattr(exc, 'strerror', None) or exc}",
                             path) from exc
    need = {"case", "label", "estimated_dice", "flag"}
    if table and not need <= set(table[0]):
        raise DataError(f"QC table lacks column(s) {', '.join(sorted(need - set(table[0])))}",
                        path)
    return table


def evaluate_qc(qc_csv: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                out_json: str | os.PathLike | None = None) -> dict[str, Any]:
    """Join ``medseg predict --qc``'s table to scored rows (``case``, ``label``, ``dice``, as
    :func:`evaluate_folders` returns them) by (case, label) and measure QC
    (:func:`medseg.metrics.qc.qc_agreement`); written to ``out_json`` when given.

    Raises
    ------
    DataError : the QC table lacks a column, or no (case, label) of it was scored.
    """
    import json

    from medseg.io.atomic import atomic_write_text
    from medseg.metrics.qc import qc_agreement

    path = Path(qc_csv)
    table = read_qc_table(path)
    true = {(str(r["case"]), int(r["label"])): float(r.get("dice", np.nan)) for r in rows}
    joined = [(float(q["estimated_dice"] or "nan"), true[(q["case"], int(q["label"]))],
               q["flag"]) for q in table if (q["case"], int(q["label"])) in true]
    if not joined:
        raise DataError("no (case, label) of the QC table was scored: are these the same "
                        "cases?", path)
    estimated, dice, flags = zip(*joined)
    result = qc_agreement(estimated, dice, flags)
    result["qc_rows"], result["joined"] = len(table), len(joined)
    if out_json is not None:
        plain = {k: _json_number(v) if isinstance(v, float) else v for k, v in result.items()}
        atomic_write_text(out_json, json.dumps(plain, indent=1) + "\n")
    return result


# -- calibration of saved probabilities -------------------------------------------------------
#: The file :func:`evaluate_reliability` writes beside the results.
RELIABILITY_JSON = "reliability.json"


def evaluate_reliability(pred: str | os.PathLike, gt: str | os.PathLike,
                         out_json: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The top-label reliability (:mod:`medseg.metrics.calibration`: 15 bins, voxels within
    5 mm of foreground) of the probabilities ``medseg predict --save-probabilities`` wrote
    beside its label maps (``<case>_probabilities``) in the folder ``pred``, against the
    ground truth of the same case in ``gt``, pooled over the cases; written to ``out_json``
    when given. None when ``pred`` is not a folder or holds no probabilities of a case
    of ``gt``.

    These are the probabilities as the model's card calibrates them: their ECE is the
    calibration *after* (the *before* is in the calibration report of ``medseg calibrate``).
    """
    import json

    from medseg.io import read_volume
    from medseg.io.atomic import atomic_write_text
    from medseg.io.cases import images_by_case, side_output_name
    from medseg.metrics.calibration import ECE_BINS, MARGIN_MM, Reliability, case_reliability

    if not (Path(pred).is_dir() and Path(gt).is_dir()):
        return None
    files, truths = images_by_case(pred), images_by_case(gt)
    curves = []
    for case in sorted(truths):
        path = files.get(side_output_name(case, "probabilities"))
        if path is None:
            continue
        probabilities, truth = read_volume(path), read_volume(truths[case], channels=False)
        if not probabilities.has_channels or probabilities.spatial_shape != truth.shape:
            raise DataError(f"probabilities {probabilities.shape} are not (K, x, y, z) on the "
                            f"ground truth's grid {truth.shape}", path)
        curves.append(case_reliability(probabilities.array, truth.array, truth.spacing_mm))
    if not curves:
        return None
    pooled = Reliability.pooled(curves)
    result = {"cases": len(curves), "voxels": int(pooled.counts.sum()), "bins": ECE_BINS,
              "margin_mm": MARGIN_MM, "ece": _json_number(pooled.ece),
              "reliability": pooled.to_dict()}
    if out_json is not None:
        atomic_write_text(out_json, json.dumps(result, indent=1) + "\n")
    log.info("calibration of the saved probabilities of %d cases: ECE %.4f on %d voxels",
             len(curves), pooled.ece, result["voxels"])
    return result
