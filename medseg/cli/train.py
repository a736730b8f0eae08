"""``medseg train CONFIG.yaml -o RUN_DIR``: train a pipeline (also under torchrun for DDP)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train a segmentation network from a pipeline YAML"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="pipeline YAML (see pipelines/)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR",
                        help="run folder: checkpoints, log.csv, curves.png, cache")
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN_DIR/last.resume.safetensors (weights, optimiser, "
                             "RNG and sampler state); raise train.epochs to train longer")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML-parsed), e.g. --set train.lr=3e-4; "
                             "repeatable")
    parser.add_argument("--device", default="auto",
                        help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (medseg.runtime's table; default: train.amp of "
                             "the config, auto = bf16/fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="MIN",
                        help="wall-clock budget: stop (validate and save) after the last epoch "
                             "expected to finish within it; --resume continues")
    parser.add_argument("--debug-param-hashes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug-kill-after-epoch", type=int, default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.runtime import Runtime
    from medseg.training import TrainOptions, train

    cfg = load_config(args.config, args.overrides)
    runtime = Runtime.resolve(args.device, cfg.train.amp if args.amp is None else args.amp)
    options = TrainOptions(
        resume=args.resume,
        progress=False if (args.no_progress or args.quiet) else None,
        debug_param_hashes=args.debug_param_hashes,
        debug_kill_after_epoch=args.debug_kill_after_epoch,
        max_minutes=args.max_minutes,
    )
    result = train(cfg, args.output, options, runtime)
    if result.best_epoch:
        log.info("done: %d epochs; best checkpoint %s (epoch %d, score %.4f)", result.epoch,
                 args.output / "best.safetensors", result.best_epoch, result.best_score)
    return 0
