"""``medseg demo``: write a phantom case, read it back and show its info."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "run the demo on generated phantoms"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("medseg_demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")


def run(args: argparse.Namespace) -> int:
    from medseg.cli.info import describe
    from medseg.data.phantom import make_phantom
    from medseg.io import read_volume, write_volume

    args.out.mkdir(parents=True, exist_ok=True)
    case = make_phantom(seed=args.seed)
    paths = {"image": args.out / "phantom_ct.nii.gz", "label": args.out / "phantom_label.nii.gz"}
    write_volume(case.image, paths["image"])
    write_volume(case.label, paths["label"])
    for path in paths.values():
        print(describe(read_volume(path), path))
    print(f"wrote {paths['image']} and {paths['label']}")
    return 0
