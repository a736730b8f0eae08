"""``medseg compare``: paired statistics of two evaluations of the same cases (B against A)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare two evaluations case by case (paired differences, bootstrap CI, Wilcoxon)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results_a", type=Path, metavar="RESULTS_A",
                        help="results.csv (or its folder) of the reference, e.g. the baseline")
    parser.add_argument("results_b", type=Path, metavar="RESULTS_B",
                        help="results.csv (or its folder) compared with it; differences are B - A")
    parser.add_argument("-o", "--out", type=Path, default=Path("compare"), metavar="DIR",
                        help="folder for compare.csv and compare.json (default ./compare)")
    parser.add_argument("--metrics", default="dice,hd95_mm,assd_mm,nsd", metavar="LIST",
                        help="comma-separated metrics (default dice,hd95_mm,assd_mm,nsd; also "
                             "iou, accuracy, hd_mm, avd_mm)")
    parser.add_argument("--intersect", action="store_true",
                        help="drop (case, label) rows found in only one file instead of failing")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="bootstrap resamples (default 2000)")


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.compare import CompareOptions, compare_results, format_table

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    options = CompareOptions(metrics=metrics, intersect=args.intersect, seed=args.seed,
                             n_bootstrap=args.bootstrap)
    comparison = compare_results(args.results_a, args.results_b, options)
    comparison.write(args.out)
    sys.stdout.write(format_table(comparison) + "\n")
    return 0
