"""``medseg stats``: per-structure volume, intensity, centroid and extent of a segmentation."""

from __future__ import annotations

import argparse

from medseg.cli._options import add_labels, add_stack

HELP = "per-structure volume (mL), intensity (HU for CT), centroid and extent (mm) into CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE",
                        help="image file (or DICOM series folder), or a folder of images")
    parser.add_argument("seg", metavar="SEG",
                        help="its segmentation, or a folder paired with IMAGE by case name")
    add_labels(parser, "the labels listed (absent ones get 0 voxels) and their names; "
                       "default every label found")
    add_stack(parser)
    parser.add_argument("-o", "--output", metavar="stats.csv",
                        help="CSV file to write (default: the table on stdout)")


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.stats import stats_csv_text, stats_of_files, write_stats

    rows = stats_of_files(args.image, args.seg, labels=args.labels, stack=args.stack)
    if args.output:
        write_stats(rows, args.output)
    else:
        sys.stdout.write(stats_csv_text(rows))
    return 0
