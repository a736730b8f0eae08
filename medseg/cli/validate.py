"""``medseg validate MANIFEST``: check every case of a dataset manifest, list every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "check a dataset manifest (files, grids, label values) and list every problem"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="MSD/nnU-Net dataset.json or CSV manifest")


def run(args: argparse.Namespace) -> int:
    from medseg.data.manifest import load_manifest, validate_manifest

    manifest = load_manifest(args.manifest)
    problems = validate_manifest(manifest)
    for problem in problems:
        print(problem)
    n_cases = len(manifest.cases)
    bad = len({p.case_id for p in problems})
    if problems:
        print(f"{manifest.path}: {len(problems)} problem(s) in {bad} of {n_cases} case(s)")
        return 1
    print(f"{manifest.path}: {n_cases} case(s) OK, labels "
          + ", ".join(f"{k}={v}" for k, v in manifest.label_names.items()))
    return 0
