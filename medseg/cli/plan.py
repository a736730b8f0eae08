"""``medseg plan MANIFEST -o PLAN_DIR``: fingerprint a dataset and write a pipeline YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fingerprint a dataset and write a self-configured pipeline YAML (nnU-Net's rules)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="dataset.json (MSD / nnU-Net) or CSV")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="PLAN_DIR",
                        help="folder for fingerprint.json and plan.yaml")
    parser.add_argument("--device", default="auto",
                        help="plan for auto (default: CUDA when available), cpu or cuda")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, metavar="G",
                        help="GPU memory in GiB (default: the device's)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="H",
                        help="training hours: the schedule is fitted to a measured step time")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.planning import PlanOptions, format_summary, write_plan

    progress = not (args.no_progress or args.quiet) and sys.stderr.isatty()
    options = PlanOptions(args.device, args.gpu_memory_gb, args.time_budget, progress=progress)
    plan = write_plan(args.manifest, args.output, options)
    print(format_summary(plan))
    print(f"wrote {args.output / 'plan.yaml'} and {args.output / 'fingerprint.json'}")
    return 0
