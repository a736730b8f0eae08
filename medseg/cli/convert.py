"""``medseg convert IN OUT``: any supported image (or DICOM folder) to any supported file."""

from __future__ import annotations

import argparse
import logging

HELP = "convert an image or DICOM series between NIfTI, NRRD and MetaImage"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="image file or DICOM series folder")
    parser.add_argument("output", help="output file: .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd")
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID in a DICOM folder")
    parser.add_argument("--no-tilt", dest="tilt", action="store_false",
                        help="refuse a gantry-tilted DICOM series instead of resampling it")


def run(args: argparse.Namespace) -> int:
    from medseg.io import read_volume, write_volume
    from medseg.io.formats import format_of

    format_of(args.output, for_writing=True)  # fail on a bad output name before reading
    volume = read_volume(args.input, series=args.series, tilt=args.tilt)
    written = write_volume(volume, args.output)
    log.info("wrote %s (%r)", written, volume)
    return 0
