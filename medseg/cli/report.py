"""``medseg report``: the HTML quality-control report of ``medseg evaluate``'s results.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from medseg.cli._options import add_labels

HELP = "write an HTML quality-control report (summary, plots, worst-case overlays)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, required=True,
                        help="results.csv written by 'medseg evaluate'")
    parser.add_argument("--images", type=Path, help="folder of images (<case>.nii.gz ...)")
    parser.add_argument("--pred", type=Path, help="folder of predictions (with --gt: overlays)")
    parser.add_argument("--gt", type=Path, help="folder of ground-truth label maps")
    add_labels(parser, "the names shown (default: the label_name column)")
    parser.add_argument("--worst", type=int, default=5, metavar="N",
                        help="show overlays of the N cases with the lowest mean Dice (default 5)")
    parser.add_argument("--window", default="auto", metavar="auto|ct|mr|LOW,HIGH",
                        help="overlay display window, e.g. --window=-160,240 (default auto: "
                             "CT W400/L40 when the image minimum is below -500, else the "
                             "1st-99th percentile)")
    parser.add_argument("--compare", type=Path, metavar="compare.json",
                        help="add the paired comparison written by 'medseg compare'")
    parser.add_argument("--qc", type=Path, metavar="qc.csv",
                        help="QC table of medseg predict --qc: cases by risk, flagged cases' "
                             "error beside uncertainty overlays (<case>_uncertainty in --pred)")
    parser.add_argument("--calibration", type=Path, metavar="JSON",
                        help="calibration report (medseg calibrate --report): ECE and "
                             "reliability diagram before and after")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output report.html")


def parse_window(text: str):
    """``auto`` -> None, ``ct``/``mr`` as is, ``LOW,HIGH`` -> (low, high)."""
    from medseg.errors import UsageError

    text = text.strip().lower()
    if text == "auto":
        return None
    if text in ("ct", "mr"):
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--window: expected auto, ct, mr or LOW,HIGH, got {text!r}") from None
    return low, high


def run(args: argparse.Namespace) -> int:
    from medseg.report import WorstCases, write_report

    worst = WorstCases(n=args.worst, images_dir=args.images, pred_dir=args.pred, gt_dir=args.gt,
                       window=parse_window(args.window))
    write_report(args.results, args.out, labels=args.labels, worst=worst, compare=args.compare,
                 qc=args.qc, calibration=args.calibration)
    return 0
