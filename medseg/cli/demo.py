"""``medseg demo``: phantoms -> train -> predict -> evaluate -> HTML report, in a few minutes."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train, predict, evaluate and report on generated phantoms (about 5 min on 2 CPU cores)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from medseg.demo import DEFAULT_MINUTES

    parser.add_argument("--out", type=Path, default=Path("medseg_demo"),
                        help="output folder (default ./medseg_demo)")
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"training time budget in minutes (default {DEFAULT_MINUTES}: the "
                             "whole demo then fits 5 min on 2 CPU cores)")
    parser.add_argument("--device", default="auto",
                        help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--test-cases", type=int, default=4, metavar="N",
                        help="number of test phantoms (default 4)")
    parser.add_argument("--config", type=Path, default=None,
                        help="pipeline YAML (default: pipelines/phantom_quick.yaml of the "
                             "medseg checkout)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set data.phantom.n_train=4")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def format_table(result) -> str:
    """Per-label test Dice and HD95 means, the overall mean Dice and the paths written."""
    def number(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    width = max([len("label")] + [len(s.name) for s in result.scores])
    lines = [f"{'label':<{width}}  {'Dice':>6}  {'HD95 mm':>8}"]
    lines += [f"{s.name:<{width}}  {number(s.dice, '.4f'):>6}  {number(s.hd95_mm, '.2f'):>8}"
              for s in result.scores]
    lines.append(f"{'mean':<{width}}  {number(result.mean_dice, '.4f'):>6}")
    lines.append("")
    lines.append(f"{len(result.scores)} labels, {_n_cases(result)} test cases, "
                 f"{result.iterations} training steps on {result.device}, "
                 f"{result.seconds['total']:.0f} s in all")
    key_width = max(len(k) for k in result.paths())
    lines += [f"{key + ':':<{key_width + 1}} {path}" for key, path in result.paths().items()]
    return "\n".join(lines)


def _n_cases(result) -> int:
    return len(list(Path(result.predictions).glob("*.nii.gz")))


def run(args: argparse.Namespace) -> int:
    from medseg.demo import run_demo

    result = run_demo(
        args.out, minutes=args.minutes, device=args.device, n_test=args.test_cases,
        config=args.config, overrides=args.overrides,
        progress=False if (args.no_progress or args.quiet) else None,
    )
    print(format_table(result))
    return 0
