"""k-fold cross-validation runs: ``medseg train CONFIG -o RUN --folds K [--fold N]``.

The training cases of the manifest (its ``train`` and ``val`` splits together) are cut
into ``K`` folds once, deterministically from ``train.seed``
(:func:`medseg.data.splits.kfold_splits`), and saved to ``RUN/splits.json`` (nnU-Net's
form); a later call reuses that file and checks it against the manifest. Fold ``i`` is an
ordinary, resumable training run in ``RUN/fold_<i>/`` whose config names the splits file
and the fold (``data.split_file``, ``data.fold``), so it validates on its held-out cases.
Folds share the preprocessing cache ``RUN/cache`` unless ``data.cache_dir`` says otherwise.

After all folds (or with ``--evaluate-cv``), :func:`medseg.crossval.evaluate_cv`
predicts each fold's held-out cases with its best checkpoint and scores them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from medseg.config import PipelineConfig
from medseg.data.manifest import load_manifest
from medseg.data.splits import Split, cv_cases, kfold_splits, read_splits, write_splits
from medseg.errors import UsageError
from medseg.runtime import Runtime
from medseg.training.data import manifest_path
from medseg.training.distributed import barrier, init_distributed, shutdown
from medseg.training.loop import RESUME_FILE, TrainOptions, TrainResult, train

__all__ = ["SPLITS_FILE", "fold_dir", "prepare_splits", "train_folds"]

log = logging.getLogger(__name__)
SPLITS_FILE = "splits.json"


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """The run folder of fold ``fold`` (from 0): ``RUN/fold_<fold>``."""
    return Path(run_dir) / f"fold_{fold}"


def with_cache(cfg: PipelineConfig, run_dir: Path) -> PipelineConfig:
    """``cfg`` with ``data.cache_dir`` set (default ``RUN/cache``, shared by the folds)."""
    cache = cfg.data.cache_dir or str(run_dir / "cache")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=cache))


def check_folds(folds: int, fold: int | None, n_cases: int) -> None:
    """Raise UsageError (naming ``--folds`` / ``--fold`` and the fix) for bad fold options."""
    if not 2 <= folds <= n_cases:
        raise UsageError(f"--folds {folds}: expected 2 <= K <= {n_cases} (the manifest's "
                         f"training cases); choose K in that range")
    if fold is not None and not 0 <= fold < folds:
        raise UsageError(f"--fold {fold}: folds are numbered 0 to {folds - 1} for --folds "
                         f"{folds}; choose one of them")


def prepare_splits(cfg: PipelineConfig, run_dir: str | Path, folds: int, runtime: Runtime,
                   fold: int | None = None) -> list[Split]:
    """The splits of ``RUN/splits.json``: read and checked when it exists, else made from
    ``train.seed`` and written (by the main rank); ``folds`` and ``fold`` are checked
    (:func:`check_folds`). ``cfg.data.cache_dir`` must be set (:func:`with_cache`)."""
    run_dir = Path(run_dir)
    manifest = load_manifest(manifest_path(cfg, Path(str(cfg.data.cache_dir)), runtime))
    ids = [c.case_id for c in cv_cases(manifest.cases)]
    check_folds(folds, fold, len(ids))
    path = run_dir / SPLITS_FILE
    if path.is_file():
        splits = read_splits(path, ids)
        if len(splits) != folds:
            raise UsageError(f"--folds {folds}: {path} holds {len(splits)} folds; use --folds "
                             f"{len(splits)}, or another run folder for new splits")
        return splits
    splits = kfold_splits(ids, folds, cfg.train.seed)
    if runtime.is_main:
        write_splits(path, splits)
        log.info("%d folds of %d cases -> %s", folds, len(ids), path)
    barrier(runtime)
    return splits


def fold_config(cfg: PipelineConfig, run_dir: Path, fold: int) -> PipelineConfig:
    """The config of fold ``fold``: ``data.split_file`` = ``RUN/splits.json``, ``data.fold``."""
    data = dataclasses.replace(cfg.data, split_file=str(run_dir / SPLITS_FILE), fold=fold)
    return dataclasses.replace(cfg, data=data)


def train_folds(cfg: PipelineConfig, run_dir: str | Path, folds: int, fold: int | None = None,
                options: TrainOptions | None = None,
                runtime: Runtime | None = None) -> list[TrainResult]:
    """Train every fold of ``folds`` one after the other (or only ``fold``, from 0).

    Each fold is a complete run in ``RUN/fold_<i>/`` (:func:`medseg.training.train`).
    With ``options.resume``, a fold that has resume state continues and one that has none
    starts, so an interrupted ``--folds K --resume`` picks up where it stopped.

    Raises UsageError for ``folds`` outside [2, number of training cases], ``fold``
    outside [0, folds), or a ``RUN/splits.json`` made for another number of folds;
    ConfigError for a ``splits.json`` that does not match the manifest's cases.
    """
    run_dir, options = Path(run_dir), options or TrainOptions()
    runtime = runtime or Runtime.resolve("auto", cfg.train.amp)
    cfg = with_cache(cfg, run_dir)
    if cfg.train.select is not None:
        log.info("train.select: the folds train this config's own network (screening "
                 "chooses in a plain run)")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, select=None))
    init_distributed(runtime)
    try:
        prepare_splits(cfg, run_dir, folds, runtime, fold)
        results = []
        for index in range(folds) if fold is None else [fold]:
            folder = fold_dir(run_dir, index)
            resume = options.resume and (folder / RESUME_FILE).is_file()
            log.info("fold %d of %d -> %s", index, folds, folder)
            results.append(train(fold_config(cfg, run_dir, index), folder,
                                 dataclasses.replace(options, resume=resume,
                                                     choose_postprocess=False,
                                                     calibrate=False), runtime))
        return results
    finally:
        shutdown(runtime)
