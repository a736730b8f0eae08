"""``medseg evaluate``: score predictions against ground truth, write results and summary CSVs."""

from __future__ import annotations

import argparse
import os

HELP = "score predicted label maps against ground truth (Dice, HD95, NSD...) into CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="prediction file, or folder paired by file name")
    parser.add_argument("--gt", required=True, help="ground-truth file, or folder")
    parser.add_argument("-o", "--output", required=True, metavar="results.csv",
                        help="per case x label CSV; summary.csv/.json go beside it")
    parser.add_argument("--labels", metavar="JSON",
                        help='labels.json ({"1": "liver"}) or MSD dataset.json: labels to score')
    parser.add_argument("--convention", default="medseg",
                        help="medseg (default), monai, deepmind or medpy")
    parser.add_argument("--nsd-tolerance", type=float, default=1.0, metavar="MM",
                        help="surface Dice tolerance in mm (default 1.0)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel processes (default min(4, CPUs))")
    parser.add_argument("--missing-as-empty", action="store_true",
                        help="score a ground truth without prediction as an empty prediction")


def run(args: argparse.Namespace) -> int:
    import logging

    from medseg.evaluation import evaluate_folders

    rows, summary = evaluate_folders(
        args.pred, args.gt, args.output, labels=args.labels, convention=args.convention,
        nsd_tolerance_mm=args.nsd_tolerance, workers=args.workers,
        missing_as_empty=args.missing_as_empty,
    )
    overall = summary["overall"]
    dice = overall["metrics"]["dice"]["mean"]
    logging.getLogger("medseg").info(
        "%d cases, %d rows, mean Dice %s, status %s", summary["n_cases"], len(rows),
        "n/a" if dice is None else f"{dice:.4f}", overall["status"],
    )
    return 0
