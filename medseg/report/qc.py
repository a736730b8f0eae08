"""The report's confidence sections: calibration (reliability diagram, ECE) and QC by risk.

* :func:`calibration_section`: the reliability diagram and the expected calibration error
  (:mod:`medseg.metrics.calibration`) of what is known: *before* and *after* calibration
  from a calibration report (``medseg calibrate --report``, or ``RUN/cv/calibration.json``
  after ``medseg train --folds``), and the evaluated cases' saved probabilities
  (``reliability.json`` of ``medseg evaluate``, as the card calibrated them);
* :func:`risk_section`: the rows of ``medseg predict --qc``'s table joined to the true
  Dice of the results, in risk order (:func:`risk_order`), with the QC agreement of
  ``qc_evaluation.json`` when present, and for the flagged cases the error overlay beside
  the same planes with the uncertainty map (``<case>_uncertainty``) as a heat layer.

Nothing is recomputed: the curves, the ECE and the Dice are those the files hold.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from medseg.io.cases import find_case_file, images_by_case, side_output_name
from medseg.metrics.calibration import Reliability
from medseg.report._figure import figure_png, new_figure
from medseg.report.cases import read_case_volume
from medseg.report.markup import fmt_number, html_table, img_tag, num_cell, text_cell
from medseg.report.overlays import Window, overlay_png
from medseg.results import ResultRow

__all__ = ["calibration_curves", "calibration_section", "reliability_png", "risk_order",
           "risk_rows", "risk_section"]

#: Flags from the riskiest; a row's risk is its flag's place here, then its estimated Dice.
FLAG_ORDER = ("fail", "review", "ok")


# -- calibration ------------------------------------------------------------------------------
def calibration_curves(calibration: Mapping[str, Any] | None,
                       evaluated: Mapping[str, Any] | None) -> dict[str, Reliability]:
    """Named reliability curves: ``before`` / ``after calibration`` (on the calibration
    voxels) from a calibration report, ``evaluated cases`` from ``reliability.json``."""
    curves = {}
    if calibration is not None:
        curves["before calibration"] = Reliability.from_dict(calibration["reliability_before"])
        curves["after calibration"] = Reliability.from_dict(calibration["reliability_after"])
    if evaluated is not None:
        curves["evaluated cases"] = Reliability.from_dict(evaluated["reliability"])
    return curves


def reliability_png(curves: Mapping[str, Reliability]) -> bytes:
    """The reliability diagram: per curve, accuracy against mean confidence of its non-empty
    bins, with the diagonal of perfect calibration; ECE in the legend."""
    fig = new_figure(5.2, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls=":", label="perfectly calibrated")
    for (name, curve), colour in zip(curves.items(), ("#c0392b", "#2471a3", "#1e8449")):
        full = curve.counts > 0
        ax.plot(curve.confidence[full], curve.accuracy[full], marker="o", ms=4, lw=1.4,
                color=colour, label=f"{name}: ECE {curve.ece:.4f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy (argmax is the true label)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def calibration_section(calibration: Mapping[str, Any] | None,
                        evaluated: Mapping[str, Any] | None) -> str:
    """The calibration section (module docstring); empty without either input."""
    curves = calibration_curves(calibration, evaluated)
    if not curves:
        return ""
    sources = {"before calibration": calibration, "after calibration": calibration,
               "evaluated cases": evaluated}
    head = [("Probabilities", False), ("ECE", True), ("Voxels", True), ("Cases", True)]
    body = []
    for name, curve in curves.items():
        source = sources[name] or {}
        body.append("<tr>" + "".join([
            text_cell(name), num_cell(curve.ece, 4), num_cell(int(curve.counts.sum()), 0),
            num_cell(source.get("cases", math.nan), 0)]) + "</tr>")
    note = ("Expected calibration error (ECE, 15 equal-width bins of the top-label "
            "confidence) on the voxels within 5 mm of foreground (predicted or true).")
    if calibration is not None:
        own = calibration.get("label_temperatures") or {}
        note += (f" Calibration: temperature {calibration['temperature']:.3f}"
                 + (", labels with their own: " + ", ".join(
                     f"{k}: {v:.3f}" for k, v in own.items()) if own else "") + ".")
    png = reliability_png(curves)
    return ("<h2 id=\"calibration\">Calibration</h2>\n"
            f"<p class=\"note\">{escape(note)}</p>\n"
            f"{html_table('calibration-table', head, body)}\n"
            f"<div class=\"plots\">{img_tag(png, 'reliability diagram', 'plot-reliability')}"
            "</div>")


# -- QC by risk -------------------------------------------------------------------------------
def risk_order(row: Mapping[str, Any]) -> tuple:
    """Sort key, riskiest first: the flag (:data:`FLAG_ORDER`; an unknown one after them),
    then the estimated Dice from low to high (a missing estimate first within its flag),
    then case and label."""
    flag = str(row["flag"])
    rank = FLAG_ORDER.index(flag) if flag in FLAG_ORDER else len(FLAG_ORDER)
    estimate = row["estimated_dice"]
    return (rank, -math.inf if math.isnan(estimate) else estimate, row["case"], row["label"])


def risk_rows(table: Sequence[Mapping[str, str]], results: Sequence[ResultRow]
              ) -> list[dict[str, Any]]:
    """The QC table's rows (``medseg predict --qc``) of the evaluated cases, each with its
    true Dice from the results (NaN when its label was not scored), in :func:`risk_order`."""
    dice = {(r.case, r.label): r.get("dice") for r in results}
    cases = {r.case for r in results}
    rows = []
    for q in table:
        if q["case"] not in cases:
            continue
        label = int(q["label"])
        rows.append({"case": q["case"], "label": label, "label_name": q.get("label_name", ""),
                     "flag": q["flag"], "estimated_dice": _number(q["estimated_dice"]),
                     "dice": dice.get((q["case"], label), math.nan),
                     "reasons": q.get("reasons", "")})
    return sorted(rows, key=risk_order)


def risk_section(rows: Sequence[Mapping[str, Any]], agreement: Mapping[str, Any] | None,
                 dirs: tuple[Any, Any, Any] | None, names: Mapping[int, str],
                 window: Window = None, max_cases: int = 10) -> str:
    """The QC section: the rows in risk order, the QC agreement, and for the first
    ``max_cases`` flagged cases their error and uncertainty overlays (``dirs``: images,
    predictions and ground-truth folders, None for none)."""
    head = [("Risk", True), ("Case", False), ("Label", True), ("Name", False), ("Flag", False),
            ("Estimated Dice", True), ("True Dice", True), ("Reasons", False)]
    body = []
    for rank, r in enumerate(rows, start=1):
        body.append("<tr>" + "".join([
            num_cell(rank, 0), text_cell(r["case"]), num_cell(r["label"], 0),
            text_cell(r["label_name"] or names.get(r["label"], "")), _flag_cell(r["flag"]),
            num_cell(r["estimated_dice"], 3), num_cell(r["dice"], 3),
            text_cell(r["reasons"])]) + "</tr>")
    parts = ["<h2 id=\"qc\">Quality control by risk</h2>",
             "<p class=\"note\">The verdicts of <code>medseg predict --qc</code>, riskiest "
             "first (fail, review, ok; then by estimated Dice), beside the true Dice.</p>",
             _agreement_note(agreement),
             f"<div class=\"scroll\">{html_table('qc-risk', head, body)}</div>"]
    flagged = list(dict.fromkeys(r["case"] for r in rows if r["flag"] != "ok"))[:max_cases]
    if dirs is not None and flagged:
        parts.append("<h3>Flagged cases: error and uncertainty</h3>\n<p class=\"note\">Left: "
                     "ground truth green (solid), prediction red (dashed). Right: the same "
                     "planes with the uncertainty map (normalised entropy, shown above "
                     "0.05).</p>")
        for case in flagged:
            parts.append(_flagged_case(case, [r for r in rows if r["case"] == case], dirs,
                                       names, window))
    return "\n".join(p for p in parts if p)


def _flagged_case(case: str, rows: Sequence[Mapping[str, Any]], dirs, names, window) -> str:
    images_dir, pred_dir, gt_dir = dirs
    gt = read_case_volume(find_case_file(gt_dir, case))
    pred = read_case_volume(find_case_file(pred_dir, case))
    image = None if images_dir is None else read_case_volume(find_case_file(images_dir, case))
    error = overlay_png(image, gt, pred, label_names=names, window=window, title=case)
    figures = [img_tag(error, f"error overlay of case {case}", f"qc-error-{case}")]
    path = images_by_case(pred_dir).get(side_output_name(case, "uncertainty"))
    if path is None:
        figures.append("<p class=\"note\">No uncertainty map: predict with "
                       "<code>--save-uncertainty</code> into this folder.</p>")
    else:
        heat = overlay_png(image, gt, pred, label_names=names, window=window,
                           title=f"{case}: uncertainty", uncertainty=read_case_volume(path))
        figures.append(img_tag(heat, f"uncertainty overlay of case {case}",
                               f"qc-uncertainty-{case}"))
    reasons = "; ".join(f"{r['label_name'] or r['label']}: {r['flag']}"
                        + (f" ({r['reasons']})" if r["reasons"] else "") for r in rows)
    return (f"<div class=\"case\"><h3>{escape(case)}</h3>\n<p>{escape(reasons)}</p>\n"
            f"<div class=\"row\">{''.join(figures)}</div></div>")


def _agreement_note(agreement: Mapping[str, Any] | None) -> str:
    if agreement is None:
        return ""
    parts = [f"{agreement['n']} (case, label) rows",
             f"Spearman(estimated, true Dice) {_fmt(agreement.get('spearman'))}",
             f"mean absolute error {_fmt(agreement.get('mae'))}",
             f"AUROC of flag != ok for true Dice < {agreement['failure_dice']:g} "
             f"{_fmt(agreement.get('auroc_flag'))}"]
    return f"<p class=\"note\">QC against the truth: {escape('; '.join(parts))}.</p>"


def _flag_cell(flag: str) -> str:
    rank = FLAG_ORDER.index(flag) if flag in FLAG_ORDER else len(FLAG_ORDER)
    return (f"<td class=\"t\" data-v=\"{rank}\"><span class=\"status s-qc-{escape(flag)}\">"
            f"{escape(flag)}</span></td>")


def _number(text: str) -> float:
    try:
        return float(text) if text not in ("", None) else math.nan
    except ValueError:
        return math.nan


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else fmt_number(value, 3).replace("&ndash;", "n/a")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file the report draws from (ImageReadError naming it when unreadable)."""
    import json

    from medseg.errors import ImageReadError

    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read {os.fspath(path)}: {exc}", path) from None
