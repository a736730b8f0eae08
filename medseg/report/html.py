"""``write_report``: the self-contained HTML quality-control report of an evaluation.

Sections: summary per label (with the overall means over rows and over
cases, and the both-empty policy), box/strip plots of Dice and HD95 per label,
the volume agreement per label (Bland-Altman table and plots), the worst
cases by mean Dice with overlay images and volumes per label, and the
sortable per-case table. The rows and their statistics come from
:class:`medseg.results.Results` (what ``medseg evaluate`` wrote); nothing is
recomputed here. See :mod:`medseg.report` for the conventions.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.errors import UsageError
from medseg.io.atomic import atomic_write_text, check_parent
from medseg.io.cases import find_case_file, label_names_from_mapping, read_label_names
from medseg.metrics import STATUSES
from medseg.report.agreement import bland_altman_png
from medseg.report.cases import check_dirs, read_case_volume
from medseg.report.markup import (TITLES, fmt_number, html_table, img_tag, num_cell, status_cell,
                                  text_cell)
from medseg.report.overlays import Window, choose_window, overlay_png
from medseg.report.plots import metric_plot_png
from medseg.report.template import page
from medseg.results import ResultRow, Results

__all__ = ["WorstCases", "write_report"]

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("dice", "iou", "hd95_mm", "assd_mm", "nsd")
_DIGITS = {"dice": 3, "iou": 3, "accuracy": 4, "nsd": 3}  # others: 2 (mm, mL)
_SUMMARY_STATS = {"dice": ("mean", "median", "std"), "hd95_mm": ("mean", "median", "std")}
_PLOTS = (("dice", "Dice per label", True), ("hd95_mm", "HD95 per label (mm)", False))


@dataclass(frozen=True)
class WorstCases:
    """The report's worst-cases section: how many, and where their overlay images come from.

    Attributes
    ----------
    n : number of worst cases (lowest mean Dice) shown (>= 0).
    images_dir, pred_dir, gt_dir : folders holding ``<case>.<ext>`` (any image
        extension: .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd); with ``pred_dir`` and
        ``gt_dir`` the worst cases get overlay images, over the image when
        ``images_dir`` is given (``<case>_0000.<ext>`` there too).
    window : display window of the overlays: None (auto), ``"ct"``, ``"mr"`` or (low, high).
    """

    n: int = 5
    images_dir: str | os.PathLike | None = None
    pred_dir: str | os.PathLike | None = None
    gt_dir: str | os.PathLike | None = None
    window: Window = None

    def __post_init__(self) -> None:
        n = self.n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UsageError(f"worst_n must be an integer >= 0, got {n!r}")
        if self.window is not None:
            choose_window(np.zeros(2), self.window)  # validate before any work


def write_report(
    results_csv: str | os.PathLike,
    out_html: str | os.PathLike,
    labels: str | os.PathLike | Mapping[int, str] | None = None,
    worst: WorstCases | None = None,
    compare: str | os.PathLike | None = None,
    qc: str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = None,
) -> Path:
    """Write a self-contained HTML report of ``results_csv`` to ``out_html``.

    Parameters
    ----------
    results_csv : the results.csv of ``medseg evaluate`` (or its folder), loaded
        with its summary.json by :meth:`medseg.results.Results.load`.
    out_html : output file, written atomically (nothing is written on error);
        its folder is created when missing.
    labels : label names: a label-name file
        (:func:`medseg.io.cases.read_label_names`) or a mapping; default: the
        ``label_name`` column.
    worst : :class:`WorstCases` (default: 5 cases, no overlays).
    compare : a ``compare.json`` of ``medseg compare``: adds its section
        (:mod:`medseg.report.compare`) at the end.
    qc : the ``qc.csv`` of ``medseg predict --qc``: adds the QC section
        (:mod:`medseg.report.qc`): the rows by risk with the true Dice (and the agreement
        of ``qc_evaluation.json`` beside the results when present), and for the flagged
        cases the error overlay beside the uncertainty overlay (folders in ``worst``).
    calibration : a calibration report (``medseg calibrate --report``,
        ``RUN/cv/calibration.json``): ECE and reliability before and after calibration in
        the calibration section, which also shows ``reliability.json`` beside the results
        (``medseg evaluate`` writes it from saved probabilities) when present.

    Returns
    -------
    The path written.

    Raises
    ------
    DataError, ConfigError, ImageReadError, UsageError, GeometryError
        Bad results, labels, folders or case files (message names the file).
    """
    worst = worst or WorstCases()
    images_dir, pred_dir, gt_dir = worst.images_dir, worst.pred_dir, worst.gt_dir
    worst_n, window = worst.n, worst.window
    check_parent(out_html)
    overlays = check_dirs(images_dir, pred_dir, gt_dir)
    extra = _compare_section(compare)
    results = Results.load(results_csv)
    rows = results.rows
    names = _label_names(rows, labels)
    columns = [c for c in TITLES if any(c in r.metrics for r in rows)]
    dirs = (images_dir, pred_dir, gt_dir) if overlays else None
    confidence = _confidence_sections(results_csv, rows, qc, calibration, dirs, names, window)
    body = "\n".join([
        _header(Path(results_csv), rows, names, _nav(confidence)),
        _summary_section(results.summary, names, columns),
        _plots_section(rows, names, columns),
        _volumes_section(rows, results.summary, names),
        _worst_section(results, names, worst_n, dirs, window),
        *confidence,
        _cases_section(rows, names, columns),
        *extra,
    ])
    atomic_write_text(out_html, page("medseg QC report", body))
    log.info("wrote report %s (%d cases, %d labels)", out_html,
             len({r.case for r in rows}), len(names))
    return Path(out_html)


def _label_names(rows: list[ResultRow], labels: str | os.PathLike | Mapping[int, str] | None
                 ) -> dict[int, str]:
    """Names of the labels in ``rows``: from ``labels`` first, then the label_name column."""
    given: Mapping[int, str] = {}
    if isinstance(labels, Mapping):
        given = label_names_from_mapping(labels)
    elif labels is not None:
        given = read_label_names(labels)
    names: dict[int, str] = {}
    for row in rows:
        if not names.get(row.label):
            names[row.label] = given.get(row.label) or row.label_name
    return {k: (v or f"label {k}") for k, v in sorted(names.items())}


# -- sections ---------------------------------------------------------------

def _compare_section(compare: str | os.PathLike | None) -> list[str]:
    """The comparison section of ``compare`` (a compare.json), or nothing."""
    if compare is None:
        return []
    from medseg.report.compare import compare_section, load_comparison

    return [compare_section(load_comparison(compare))]


def _confidence_sections(results_csv, rows, qc, calibration, dirs, names, window
                         ) -> list[str]:
    """The calibration and QC sections (:mod:`medseg.report.qc`) of what is given or lies
    beside the results."""
    from medseg.evaluation import RELIABILITY_JSON, read_qc_table
    from medseg.report.qc import calibration_section, read_json, risk_rows, risk_section

    folder = Path(results_csv) if Path(results_csv).is_dir() else Path(results_csv).parent
    evaluated = _beside(folder / RELIABILITY_JSON, read_json)
    sections = []
    if calibration is not None or evaluated is not None:
        known = None if calibration is None else _calibration_report(calibration, read_json)
        sections.append(calibration_section(known, evaluated))
    if qc is not None:
        agreement = _beside(folder / "qc_evaluation.json", read_json)
        sections.append(risk_section(risk_rows(read_qc_table(qc), rows), agreement, dirs,
                                     names, window))
    return sections


def _nav(sections: list[str]) -> str:
    """Links to the confidence sections present."""
    links = (("calibration", "Calibration"), ("qc", "QC by risk"))
    return "".join(f"<a href=\"#{ident}\">{title}</a>" for ident, title in links
                   if any(f"id=\"{ident}\"" in s for s in sections))


def _beside(path: Path, read):
    return read(path) if path.is_file() else None


def _calibration_report(path, read) -> dict:
    from medseg.errors import DataError

    data = read(path)
    need = {"temperature", "reliability_before", "reliability_after"}
    if not isinstance(data, dict) or not need <= set(data):
        raise DataError(f"not a calibration report (medseg calibrate --report): it needs "
                        f"{', '.join(sorted(need))}", path)
    return data


def _header(results_csv: Path, rows: list[ResultRow], names: dict[int, str],
            extra_nav: str = "") -> str:
    n_cases = len({r.case for r in rows})
    return (
        "<h1>medseg quality-control report</h1>\n"
        f"<p class=\"meta\">{escape(results_csv.name)}: {n_cases} cases, {len(names)} labels, "
        f"{len(rows)} rows &middot; medseg {escape(__version__)}</p>\n"
        "<nav><a href=\"#summary-section\">Summary</a><a href=\"#plots\">Plots</a>"
        "<a href=\"#volumes\">Volume agreement</a>"
        f"<a href=\"#worst\">Worst cases</a>{extra_nav}"
        "<a href=\"#per-case\">Per-case table</a></nav>"
    )


def _summary_section(summary: dict, names: dict[int, str], columns: list[str]) -> str:
    metrics = [m for m in SUMMARY_METRICS if m in columns]
    head = [("Label", True), ("Name", False), ("n", True), ("n counted", True)]
    head += [(s.replace("_", " "), True) for s in STATUSES]
    for m in metrics:
        head += [(f"{TITLES[m]} {stat}", True) for stat in _stats_of(m)]
    body = []
    for key, group in summary["labels"].items():
        label = int(key)
        cells = [num_cell(label, 0), text_cell(names.get(label, f"label {label}")),
                 num_cell(group["n_rows"], 0), num_cell(group["n_counted"], 0)]
        cells += [num_cell(group["status"][st], 0) for st in STATUSES]
        for m in metrics:
            stats = group["metrics"][m]
            cells += [num_cell(_nan_if_none(stats[stat]), _DIGITS.get(m, 2))
                      for stat in _stats_of(m)]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        "<h2 id=\"summary-section\">Summary per label</h2>\n"
        f"<p class=\"note\">Rows counted: {escape(summary['both_empty_policy'])}.</p>\n"
        "<p class=\"note\">Mean, median and standard deviation over the finite values of the "
        "counted rows (NaN and inf, e.g. distances to an empty mask, are left out; the status "
        "columns count them). Click a header to sort.</p>\n"
        f"<div class=\"scroll\">{html_table('summary', head, body)}</div>\n"
        f"{_overall_table(summary['overall'], metrics)}"
    )


def _overall_table(overall: dict, metrics: list[str]) -> str:
    """Each metric's mean over the counted (case, label) rows and over the per-case means."""
    head = [("Metric", False), ("mean over rows", True), ("n rows", True),
            ("mean over cases", True), ("n cases", True)]
    body = []
    for m in metrics:
        by_row, by_case = overall["metrics"][m], overall["case_mean"][m]
        body.append("<tr>" + "".join([
            text_cell(TITLES[m]), num_cell(_nan_if_none(by_row["mean"]), _DIGITS.get(m, 2)),
            num_cell(by_row["n"], 0), num_cell(_nan_if_none(by_case["mean"]), _DIGITS.get(m, 2)),
            num_cell(by_case["n"], 0)]) + "</tr>")
    return ("<h3>Overall</h3>\n<p class=\"note\">Mean over the counted (case, label) rows, and "
            "mean over the cases of each case's mean (every case weighs one).</p>\n"
            f"{html_table('overall', head, body)}")


def _stats_of(metric: str) -> tuple[str, ...]:
    """Statistics shown in the summary table for ``metric`` (mean only for the secondary ones)."""
    return _SUMMARY_STATS.get(metric, ("mean",))


def _plots_section(rows: list[ResultRow], names: dict[int, str], columns: list[str]) -> str:
    images = []
    for metric, title, unit_range in _PLOTS:
        if metric in columns:
            png = metric_plot_png(rows, names, metric, title, unit_range=unit_range)
            images.append(img_tag(png, f"{title}: box and strip plot", f"plot-{metric}"))
    note = ("<p class=\"note\">One row per label; box = quartiles, line = median, dots = cases. "
            "Infinite values are red crosses at the right edge; NaN values are not drawn.</p>")
    plots = f"<div class=\"plots\">{''.join(images)}</div>"
    return f"<h2 id=\"plots\">Distributions</h2>\n{note}\n{plots}"


def _volumes_section(rows: list[ResultRow], summary: dict, names: dict[int, str]) -> str:
    """Bland-Altman table and plot of predicted against true volume, per label."""
    agreement = {int(k): g["volume_agreement"] for k, g in summary["labels"].items()}
    head = [("Label", True), ("Name", False), ("n", True), ("bias (mL)", True),
            ("SD (mL)", True), ("LoA low (mL)", True), ("LoA high (mL)", True),
            ("Pearson r", True)]
    body = []
    for label, a in agreement.items():
        cells = [num_cell(label, 0), text_cell(names.get(label, f"label {label}")),
                 num_cell(a["n"], 0)]
        cells += [num_cell(_nan_if_none(a[k]), 2)
                  for k in ("bias_ml", "sd_ml", "loa_low_ml", "loa_high_ml")]
        body.append("<tr>" + "".join(cells + [num_cell(_nan_if_none(a["pearson_r"]), 3)])
                    + "</tr>")
    png = bland_altman_png(rows, names, agreement)
    plot = "" if png is None else img_tag(png, "Bland-Altman plots of the volumes", "plot-volumes")
    return (
        "<h2 id=\"volumes\">Volume agreement</h2>\n"
        f"<p class=\"note\">{escape(summary['volume_agreement_rows'])}. Plots: x = mean of "
        "predicted and true volume, y = predicted - true; solid line bias, dashed lines the "
        "95 % limits of agreement.</p>\n"
        f"<div class=\"scroll\">{html_table('agreement', head, body)}</div>\n"
        f"<div class=\"plots\">{plot}</div>"
    )


def _worst_section(results: Results, names, worst_n, dirs, window) -> str:
    rows = results.rows
    worst = results.worst_cases(worst_n)
    parts = [f"<h2 id=\"worst\">Worst {len(worst)} cases by mean Dice</h2>"]
    if dirs is None:
        parts.append("<p class=\"note\">No overlays: give the prediction and ground-truth "
                     "folders (and the images) to see them.</p>")
    else:
        parts.append(
            "<p class=\"note\">Ground truth green (solid), prediction red (dashed); the axial, "
            "coronal and sagittal planes cross at the densest error (yellow +). Radiological "
            "convention: patient right on the viewer's left (axial, coronal), anterior on the "
            "left (sagittal); physical aspect ratio.</p>")
    for rank, (case, mean_dice) in enumerate(worst, start=1):
        case_rows = [r for r in rows if r.case == case]
        parts.append(_worst_case(rank, case, mean_dice, case_rows, names, dirs, window))
    return "\n".join(parts)


def _worst_case(rank, case, mean_dice, case_rows, names, dirs, window) -> str:
    image = gt = pred = None
    overlay = ""
    if dirs is not None:
        images_dir, pred_dir, gt_dir = dirs
        gt = read_case_volume(find_case_file(gt_dir, case))
        pred = read_case_volume(find_case_file(pred_dir, case))
        if images_dir is not None:
            image = read_case_volume(find_case_file(images_dir, case))
        title = f"{case}: mean Dice {fmt_number(mean_dice, 3)}"
        png = overlay_png(image, gt, pred, label_names=names, window=window, title=title)
        overlay = img_tag(png, f"overlay of case {case}", f"overlay-{rank}")
    volumes = _volume_table(case_rows, names, gt, pred)
    return (
        f"<div class=\"case\"><h3>{rank}. {escape(case)} &mdash; mean Dice "
        f"{fmt_number(mean_dice, 3)}</h3>\n<div class=\"row\">{overlay}{volumes}</div></div>"
    )


def _volume_table(case_rows: list[ResultRow], names, gt, pred) -> str:
    """Volumes (mL) per label of one case: from results.csv, else counted in the masks."""
    counted = _count_ml(gt), _count_ml(pred)
    head = [("Label", True), ("Name", False), ("Status", False), ("Dice", True),
            ("HD95 (mm)", True), ("Vol GT (mL)", True), ("Vol pred (mL)", True)]
    body = []
    for r in sorted(case_rows, key=lambda r: r.label):
        vol_gt = _first_finite(r.get("vol_gt_ml"), counted[0].get(r.label, math.nan))
        vol_pred = _first_finite(r.get("vol_pred_ml"), counted[1].get(r.label, math.nan))
        body.append("<tr>" + "".join([
            num_cell(r.label, 0), text_cell(names.get(r.label, "")), status_cell(r.status),
            num_cell(r.get("dice"), 3), num_cell(r.get("hd95_mm"), 2),
            num_cell(vol_gt, 2), num_cell(vol_pred, 2)]) + "</tr>")
    return f"<div class=\"scroll\">{html_table(None, head, body)}</div>"


def _count_ml(volume) -> dict[int, float]:
    if volume is None:
        return {}
    array = volume.array if not volume.has_channels else volume.array[0]
    values, counts = np.unique(np.rint(array).astype(np.int64), return_counts=True)
    return {int(v): float(c) * volume.voxel_volume_ml for v, c in zip(values, counts, strict=True)}


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _first_finite(*values: float) -> float:
    return next((v for v in values if math.isfinite(v)), math.nan)


def _cases_section(rows: list[ResultRow], names: dict[int, str], columns: list[str]) -> str:
    head = [("Case", False), ("Label", True), ("Name", False), ("Status", False)]
    head += [(TITLES[c], True) for c in columns]
    body = []
    for r in rows:
        cells = [text_cell(r.case), num_cell(r.label, 0), text_cell(names.get(r.label, "")),
                 status_cell(r.status)]
        cells += [num_cell(r.get(c), _DIGITS.get(c, 2)) for c in columns]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        "<h2 id=\"per-case\">Per-case results</h2>\n"
        "<p class=\"note\">Click a header to sort (NaN last); type to filter by case.</p>\n"
        "<input id=\"case-filter\" type=\"search\" placeholder=\"filter cases\" "
        "aria-label=\"filter cases\">\n"
        f"<div class=\"scroll\">{html_table('cases', head, body)}</div>"
    )
