"""``medseg evaluate``: score predictions against ground truth, write results and summary CSVs."""

from __future__ import annotations

import argparse
import os

from medseg.cli._options import add_labels

HELP = "score predicted label maps against ground truth (Dice, HD95, NSD...) into CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True,
                        help="prediction file, or folder paired by file name")
    parser.add_argument("--gt", required=True, help="ground-truth file, or folder")
    parser.add_argument("-o", "--output", required=True, metavar="results.csv",
                        help="per case x label CSV; summary.csv/.json go beside it")
    add_labels(parser, "the labels to score and their names")
    parser.add_argument("--reference", metavar="SERIES_DIR",
                        help="the DICOM series a DICOM-SEG / RTSTRUCT --pred or --gt is on")
    parser.add_argument("--convention", default="medseg",
                        help="medseg (default), monai, deepmind or medpy")
    parser.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                        help="surface Dice tolerance in mm (default 1.0)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel processes (default min(4, CPUs))")
    parser.add_argument("--missing-as-empty", action="store_true",
                        help="score a ground truth without prediction as an empty prediction")
    parser.add_argument("--instances", metavar="LABELS",
                        help="comma-separated label values or names to score lesion-wise "
                             "(connected components): lesions.csv beside the results")
    parser.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=None,
                        help="with --instances: voxel neighbourhood of a lesion (default 26)")
    parser.add_argument("--match", default=None, metavar="RULE",
                        help="with --instances: pairs that may match, iou>0 (default) or "
                             "iou>=T (one-to-one, maximising IoU)")
    parser.add_argument("--include-both-empty", action="store_true",
                        help="count labels absent from both masks in the summary statistics "
                             "(Dice 1 under medseg's convention), as medseg did before; default: "
                             "left out and counted")
    parser.add_argument("--qc", metavar="qc.csv", default=None,
                        help="the QC table of `medseg predict --qc`: Spearman and mean absolute "
                             "error of estimated vs true Dice, AUROC of flag != ok for true "
                             "Dice < 0.8 -> qc_evaluation.json beside the results")
    parser.add_argument("--calibration", metavar="JSON", default=None,
                        help="with --report: a calibration report (medseg calibrate --report, "
                             "RUN/cv/calibration.json) whose ECE and reliability before and "
                             "after calibration the report shows")
    parser.add_argument("--report", nargs="?", const="", default=None, metavar="PATH",
                        help="also write a self-contained HTML report (default PATH: report.html "
                             "beside the results CSV); folders --pred/--gt add worst-case overlays")
    parser.add_argument("--images", metavar="DIR",
                        help="with --report: folder of the images (<case>.nii.gz ...) to draw "
                             "the overlays on")


def run(args: argparse.Namespace) -> int:
    import logging

    from medseg.evaluation import evaluate_folders

    if args.report is not None:
        _check_report_args(args)
    rows, summary = evaluate_folders(
        args.pred, args.gt, args.output, labels=args.labels, convention=args.convention,
        nsd_tolerance_mm=args.nsd_tolerance, workers=args.workers,
        missing_as_empty=args.missing_as_empty, include_both_empty=args.include_both_empty,
        lesions=_lesion_options(args), reference=args.reference,
    )
    for line in _summary_lines(summary, len(rows)):
        logging.getLogger("medseg").info("%s", line)
    if args.qc is not None:
        _evaluate_qc(args, rows)
    _evaluate_reliability(args)
    if args.report is not None:
        _write_report(args)
    else:
        for option in ("images", "calibration"):
            if getattr(args, option) is not None:
                logging.getLogger("medseg").warning("--%s is only used with --report: ignored",
                                                    option)
    return 0


def _evaluate_reliability(args: argparse.Namespace) -> None:
    """The calibration of the probabilities saved beside the predictions, when there are
    any: ``reliability.json`` beside the results (and in the report)."""
    from pathlib import Path

    from medseg.evaluation import RELIABILITY_JSON, evaluate_reliability

    out = Path(args.output).with_name(RELIABILITY_JSON)
    if evaluate_reliability(args.pred, args.gt, out) is None and out.is_file():
        out.unlink()  # an earlier run's: not of these predictions


def _evaluate_qc(args: argparse.Namespace, rows) -> None:
    """QC against the true Dice (``--qc``), logged and written beside the results."""
    import logging
    from pathlib import Path

    from medseg.evaluation import evaluate_qc

    out = Path(args.output).with_name("qc_evaluation.json")
    r = evaluate_qc(args.qc, rows, out)
    logging.getLogger("medseg").info(
        "QC on %d (case, label) rows: Spearman %s, MAE %s, AUROC of flag != ok for Dice < %g: "
        "%s (of 1 - estimated Dice: %s); %d flagged, %d failures -> %s", r["n"],
        _fmt(r["spearman"]), _fmt(r["mae"]), r["failure_dice"], _fmt(r["auroc_flag"]),
        _fmt(r["auroc_estimate"]), r["flagged"], r["failures"], out)


def _lesion_options(args: argparse.Namespace):
    """``LesionOptions`` from --instances/--connectivity/--match; None without --instances."""
    import logging

    from medseg.metrics.lesions import LesionOptions

    if args.instances is None:
        if args.connectivity is not None or args.match is not None:
            logging.getLogger("medseg").warning("--connectivity/--match are only used with "
                                                "--instances: ignored")
        return None
    return LesionOptions(tuple(s.strip() for s in args.instances.split(",") if s.strip()),
                         args.connectivity or 26, args.match or "iou>0")


def _summary_lines(summary: dict, n_rows: int) -> list[str]:
    """The printed summary: counts, mean Dice over rows and over cases, the both-empty policy."""
    overall = summary["overall"]
    row_dice, case_dice = overall["metrics"]["dice"], overall["case_mean"]["dice"]
    return [
        f"{summary['n_cases']} cases, {n_rows} rows, status {overall['status']}",
        f"mean Dice {_fmt(row_dice['mean'])} over {overall['n_counted']} (case, label) rows; "
        f"{_fmt(case_dice['mean'])} as the mean of {case_dice['n']} per-case means",
        f"policy: {summary['both_empty_policy']}",
    ]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _report_path(args: argparse.Namespace):
    """``--report PATH``, or ``report.html`` beside the results CSV for a bare ``--report``."""
    from pathlib import Path

    return Path(args.report) if args.report else Path(args.output).with_name("report.html")


def _check_report_args(args: argparse.Namespace) -> None:
    """Fail before evaluating when the report could not be written."""
    from pathlib import Path

    from medseg.errors import ImageReadError, UsageError
    from medseg.io.atomic import check_parent

    folders = Path(args.pred).is_dir() and Path(args.gt).is_dir()
    if args.images is not None and not folders:
        raise UsageError("--images needs --pred and --gt to be folders (overlays are drawn "
                         f"per case), got {args.pred} and {args.gt}")
    if args.images is not None and not Path(args.images).is_dir():
        raise ImageReadError("--images: folder does not exist", args.images)
    if args.calibration is not None and not Path(args.calibration).is_file():
        raise ImageReadError("--calibration: file does not exist", args.calibration)
    check_parent(_report_path(args))


def _write_report(args: argparse.Namespace) -> None:
    """The HTML report of the results just written; overlays when --pred/--gt are folders."""
    import logging
    from pathlib import Path

    from medseg.report import WorstCases, write_report

    folders = Path(args.pred).is_dir() and Path(args.gt).is_dir()
    if not folders:
        logging.getLogger("medseg").info("--pred/--gt are files: report without overlays")
    worst = WorstCases(images_dir=args.images, pred_dir=args.pred if folders else None,
                       gt_dir=args.gt if folders else None)
    path = write_report(args.output, _report_path(args), labels=args.labels, worst=worst,
                        qc=args.qc, calibration=args.calibration)
    logging.getLogger("medseg").info("report: %s", path)
