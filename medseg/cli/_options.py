"""Options several commands share, spelled and explained once."""

from __future__ import annotations

import argparse

LABELS_FORMS = ('a label-name file: {"1": "liver"}, {"liver": 1}, or a dataset.json with '
                '"labels" (MSD or nnU-Net)')


def add_labels(parser: argparse.ArgumentParser, role: str) -> None:
    """``--labels FILE``: label names read by :func:`medseg.io.cases.read_label_names`;
    ``role`` says what the command does with them."""
    parser.add_argument("--labels", metavar="JSON", help=f"{LABELS_FORMS}; {role}")
