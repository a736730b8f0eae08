"""``medseg convert IN OUT``: images and label maps between NIfTI, NRRD, MetaImage and DICOM.

* an image file or DICOM folder to ``.nii.gz`` / ``.nrrd`` / ``.mha`` ...;
* a label file to a DICOM-SEG or RTSTRUCT: ``medseg convert LABELS.nii.gz
  --reference SERIES_DIR OUT.dcm [--dicom-format seg|rtstruct]``;
* a DICOM-SEG or RTSTRUCT to a label file on the series' grid: ``medseg convert
  SEG_OR_RTSTRUCT.dcm --reference SERIES_DIR OUT.nii.gz [--overlap first|last]``.
"""

from __future__ import annotations

import argparse
import logging

from medseg.cli._options import add_labels, add_dicom_input

HELP = "convert images and label maps between NIfTI, NRRD, MetaImage, DICOM-SEG and RTSTRUCT"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="image or label file, DICOM series folder, or a "
                                      "DICOM-SEG / RTSTRUCT .dcm")
    parser.add_argument("output", help="output file: .nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd, "
                                       "or .dcm (DICOM-SEG / RTSTRUCT of a label map)")
    add_dicom_input(parser)
    parser.add_argument("--reference", metavar="SERIES_DIR",
                        help="the DICOM image series the labels are on (for .dcm output, and "
                             "to read a DICOM-SEG / RTSTRUCT input)")
    parser.add_argument("--dicom-format", choices=["seg", "rtstruct"], default="seg",
                        help="what a .dcm output is: DICOM-SEG (default) or RTSTRUCT")
    parser.add_argument("--overlap", choices=["error", "first", "last"], default="error",
                        help="overlapping segments / ROIs of a DICOM input: an error (default), "
                             "or the first / last of them wins")
    add_labels(parser, "the names of a .dcm output's segments / ROIs")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg.io import read_volume, write_volume
    from medseg.io.formats import format_of
    from medseg.io.labels import is_dicom_labels, read_labels, write_labels

    to_dicom = Path(args.output).suffix.lower() == ".dcm"
    if not to_dicom:
        format_of(args.output, for_writing=True)  # fail on a bad output name before reading
    if to_dicom or is_dicom_labels(args.input):
        labels = read_labels(args.input, reference=args.reference, overlap=args.overlap)
        written = write_labels(labels, args.output, _names(args, labels.meta),
                               reference_files=_reference_files(args.reference, to_dicom),
                               dicom_format=args.dicom_format)
        log.info("wrote %s (%r, labels %s)", written, labels, labels.meta["label_names"])
        return 0
    volume = read_volume(args.input, series=args.series, tilt=args.tilt, stack=args.stack)
    written = write_volume(volume, args.output)
    log.info("wrote %s (%r)", written, volume)
    return 0


def _names(args: argparse.Namespace, meta: dict) -> dict[int, str]:
    from medseg.io.cases import read_label_names

    return read_label_names(args.labels) if args.labels else meta["label_names"]


def _reference_files(reference: str | None, needed: bool) -> list[str] | None:
    """The slice files of the reference series (None without a reference or need)."""
    if reference is None or not needed:
        return None
    from medseg.io import read_volume

    return read_volume(reference, channels=False).meta.get("dicom_files")
