"""Options several commands share, spelled and explained once."""

from __future__ import annotations

import argparse

LABELS_FORMS = ('a label-name file: {"1": "liver"}, {"liver": 1}, or a dataset.json with '
                '"labels" (MSD or nnU-Net)')


STACK_HELP = ("the image stack of a DICOM series or object that holds several (magnitude and "
              "phase, echoes, Dixon images, time points): its number from 1, or a name such as "
              "phase, echo2, water, b1000; 'medseg info' lists them (default: the only stack, or a "
              "single file's own)")


def add_stack(parser: argparse.ArgumentParser, channels: bool = False) -> None:
    """``--stack K|NAME`` (:func:`medseg.io.read_volume`'s ``stack``); with ``channels`` it
    may be repeated, one stack per input channel in the model's channel order."""
    if channels:
        parser.add_argument("--stack", action="append", metavar="K|NAME",
                            help=f"{STACK_HELP}; repeat it to give several stacks as the "
                                 "model's input channels, in the order of its channels "
                                 "(e.g. --stack water --stack fat; a stack named as another "
                                 "of the model card's channels is refused, never reordered); "
                                 "a manifest case may name its own (column or key 'stack')")
    else:
        parser.add_argument("--stack", metavar="K|NAME", help=STACK_HELP)


def add_dicom_input(parser: argparse.ArgumentParser) -> None:
    """``--series UID``, ``--stack K|NAME`` and ``--no-tilt``: which DICOM volume an input
    means, and whether a gantry tilt is resampled (:func:`medseg.io.read_volume`)."""
    parser.add_argument("--series", metavar="UID", help="SeriesInstanceUID in a DICOM folder")
    add_stack(parser)
    parser.add_argument("--no-tilt", dest="tilt", action="store_false",
                        help="refuse a gantry-tilted DICOM series instead of resampling it")


def add_labels(parser: argparse.ArgumentParser, role: str) -> None:
    """``--labels FILE``: label names read by :func:`medseg.io.cases.read_label_names`;
    ``role`` says what the command does with them."""
    parser.add_argument("--labels", metavar="JSON", help=f"{LABELS_FORMS}; {role}")
