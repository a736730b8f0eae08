"""``medseg plan MANIFEST -o PLAN_DIR``: fingerprint a dataset and write a pipeline YAML
(``plan.yaml``, 3D or thin slab) and, beside it, nnU-Net's ``2d`` configuration
(``plan_2d.yaml``); both train and predict with the same commands."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fingerprint a dataset and write a self-configured pipeline YAML (nnU-Net's rules)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="dataset.json (MSD / nnU-Net) or CSV")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="PLAN_DIR",
                        help="folder for fingerprint.json, plan.yaml and plan_2d.yaml")
    parser.add_argument("--device", default="auto",
                        help="plan for auto (default: CUDA when available), cpu or cuda")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, metavar="G",
                        help="GPU memory in GiB (default: the device's)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="H",
                        help="training hours: the schedule is fitted to a measured step time")
    parser.add_argument("--layout", default=None, metavar="3d|slab|2d",
                        help="plan.yaml's layout (default: slab for anisotropic data, else 3d)")
    parser.add_argument("--2d", dest="plan_2d", action=argparse.BooleanOptionalAction,
                        default=True, help="also write plan_2d.yaml, nnU-Net's 2d "
                        "configuration: a per-slice U-Net (default: on; with --time-budget "
                        "its step time is measured too, within the budget)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys

    from medseg.planning import PlanOptions, format_summary, write_plan

    progress = not (args.no_progress or args.quiet) and sys.stderr.isatty()
    options = PlanOptions(args.device, args.gpu_memory_gb, args.time_budget, progress=progress,
                          layout=args.layout, plan_2d=args.plan_2d)
    plan = write_plan(args.manifest, args.output, options)
    print(format_summary(plan))
    written = [args.output / "plan.yaml"]
    for other in plan.alternatives:
        name = args.output / f"plan_{other.design.layout}.yaml"
        print(f"\n{name.name}:\n{format_summary(other)}")
        written.append(name)
    print(f"wrote {', '.join(map(str, written))} and {args.output / 'fingerprint.json'}")
    return 0
