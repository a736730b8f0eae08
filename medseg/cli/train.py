"""``medseg train CONFIG.yaml -o RUN_DIR``: train a pipeline (also under torchrun for DDP).

``--folds K`` trains K cross-validation folds into ``RUN_DIR/fold_<i>/`` and then evaluates
them out of fold (``RUN_DIR/cv/``); ``--folds K --fold N`` trains fold N only;
``--evaluate-cv`` evaluates the folds of ``RUN_DIR`` (after training any fold asked for).
A config with ``train.select`` (``medseg plan --time-budget`` on highly anisotropic data)
screens its candidates first and continues the better one
(:mod:`medseg.training.screening`; ``RUN_DIR/selection.json``).
"""

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
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="k-fold cross-validation: train K folds (splits saved in "
                             "RUN_DIR/splits.json, runs in RUN_DIR/fold_<i>/), then predict and "
                             "score each fold's held-out cases into RUN_DIR/cv/ and choose the "
                             "post-processing")
    parser.add_argument("--fold", type=int, default=None, metavar="N",
                        help="with --folds K: train only fold N (0 to K-1), e.g. one fold per "
                             "GPU or job; run --evaluate-cv once all folds are trained")
    parser.add_argument("--evaluate-cv", action="store_true",
                        help="out-of-fold evaluation and post-processing choice of the folds "
                             "in RUN_DIR (all folds must be trained)")
    parser.add_argument("--debug-param-hashes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--debug-kill-after-epoch", type=int, default=None, help=argparse.SUPPRESS)


def _check_fold_options(args: argparse.Namespace) -> None:
    from medseg.errors import UsageError

    if args.fold is not None and args.folds is None:
        raise UsageError(f"--fold {args.fold} needs --folds K (the number of folds), e.g. "
                         f"--folds 5 --fold {args.fold}")


def run(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.runtime import Runtime
    from medseg.crossval import evaluate_cv
    from medseg.training import TrainOptions, train, train_folds

    _check_fold_options(args)
    cfg = load_config(args.config, args.overrides)
    runtime = Runtime.resolve(args.device, cfg.train.amp_with(args.amp))
    options = TrainOptions(
        resume=args.resume,
        progress=False if (args.no_progress or args.quiet) else None,
        debug_param_hashes=args.debug_param_hashes,
        debug_kill_after_epoch=args.debug_kill_after_epoch,
        max_minutes=args.max_minutes,
        amp=args.amp,
    )
    if args.folds is not None or args.evaluate_cv:
        if args.folds is not None:
            train_folds(cfg, args.output, args.folds, args.fold, options, runtime)
        if (args.fold is None or args.evaluate_cv) and runtime.is_main:
            evaluate_cv(cfg, args.output, runtime)
        return 0
    result = train(cfg, args.output, options, runtime)
    if result.best_epoch:
        log.info("done: %d epochs; best checkpoint %s (epoch %d, score %.4f)", result.epoch,
                 args.output / "best.safetensors", result.best_epoch, result.best_score)
    return 0
