"""Out-of-fold evaluation of a cross-validation run and the post-processing it implies.

:func:`evaluate_cv` (``medseg train ... --folds K`` after the folds, or ``--evaluate-cv``):

1. each fold's ``best.safetensors`` predicts its held-out cases (``val`` of
   ``RUN/splits.json``) through :func:`medseg.inference.batch.predict_cases`, with no
   post-processing, into ``RUN/cv/predictions/<case>.nii.gz`` (the cases of fold ``i``
   are listed in ``RUN/cv/folds/fold_<i>.csv``);
2. :func:`medseg.evaluation.evaluate_folders` scores them against the labels (linked
   into ``RUN/cv/labels/``): ``RUN/cv/results.csv``, ``summary.csv``, ``summary.json``;
3. :func:`~medseg.inference.postprocess_choice.choose_postprocess` keeps the largest connected component of exactly the labels
   whose mean out-of-fold Dice it raises; for the other labels it removes the components
   under a volume (:func:`~medseg.inference.postprocess_choice.choose_min_size`) where that raises their mean Dice. The choice
   goes to ``RUN/cv/postprocessing.json`` (with the Dice with and without) and into the
   model card of every fold's best checkpoint (:func:`medseg.checkpoint.update_card`), so
   ``medseg predict`` applies it;
4. a temperature (and one per label where it helps) is fitted on the held-out probabilities
   of every fold, pooled (:func:`medseg.inference.calibration.calibrate_folds`,
   foreground-near voxels), and stored in the same cards; the expected calibration error before and after and the
   reliability curves go to ``RUN/cv/calibration.json``.

The rule is nnU-Net's ``determine_postprocessing`` (a step is kept only where it raises
the out-of-fold mean Dice of the label), with component removal by size added.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.confidence import Confidence
from medseg.config import PipelineConfig
from medseg.data.manifest import load_manifest
from medseg.data.splits import cv_cases, read_splits
from medseg.errors import UsageError
from medseg.inference.postprocess_choice import (
    LabelComponents, PostprocessChoice, case_components, choose_postprocess, postprocess_dice)
from medseg.io.atomic import atomic_write_text
from medseg.io.cases import Case
from medseg.runtime import Runtime
from medseg.training.data import manifest_path
from medseg.training.folds import SPLITS_FILE, fold_dir, with_cache

__all__ = ["evaluate_cv"]

log = logging.getLogger(__name__)
BEST = "best.safetensors"


# -- the out-of-fold run -----------------------------------------------------------------------
def evaluate_cv(cfg: PipelineConfig, run_dir: str | os.PathLike,
                runtime: Runtime | None = None) -> PostprocessChoice:
    """Predict, score and choose post-processing for the cross-validation run ``run_dir``
    (see the module docstring); returns the choice written into the checkpoints.

    Raises UsageError when ``RUN/splits.json`` or a fold's ``best.safetensors`` is missing.
    """
    from medseg.checkpoint import load_checkpoint, update_card
    from medseg.evaluation import evaluate_folders

    run_dir, cv = Path(run_dir), Path(run_dir) / "cv"
    runtime = replace(runtime or Runtime.resolve("auto"), rank=0, world_size=1)
    cases, splits = _cv_cases(with_cache(cfg, run_dir), run_dir, runtime)
    best = [fold_dir(run_dir, i) / BEST for i in range(len(splits))]
    _check_trained(best, len(splits))
    for i, split in enumerate(splits):
        _predict_fold(best[i], [cases[c] for c in split["val"]], cv, i, runtime)
    _link_labels(cases.values(), cv / "labels")
    card = load_checkpoint(best[0]).card
    names = {v: n for v, n in card.labels.items() if v != 0}
    evaluate_folders(cv / "predictions", cv / "labels", cv / "results.csv", labels=names)
    choice = choose_postprocess(*_case_dice(cv, sorted(names)))
    atomic_write_text(cv / "postprocessing.json",
                      json.dumps(choice.to_dict(names), indent=1) + "\n")
    calibration = _calibrate(best, [[cases[c] for c in split["val"]] for split in splits],
                             cv, runtime)
    for path in best:
        card = load_checkpoint(path).card
        confidence = calibration.apply(card.confidence or Confidence())
        update_card(path, card.replace(postprocess=choice.postprocess, confidence=confidence))
    log.info("out-of-fold mean Dice %.4f (post-processing %s: %.4f) -> %s",
             choice.mean_dice(chosen=False), choice.postprocess.to_dict(),
             choice.mean_dice(), cv)
    return choice


def _calibrate(best: list[Path], held_out: list[list[Case]], cv: Path, runtime: Runtime):
    """The temperature fitted on every fold's held-out probabilities, pooled
    (:func:`medseg.inference.calibration.calibrate_folds`); the expected calibration error
    before and after and the reliability curves -> ``cv/calibration.json``."""
    from medseg.inference.calibration import calibrate_folds

    result = calibrate_folds(list(zip(best, held_out)), runtime)
    atomic_write_text(cv / "calibration.json", json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def _cv_cases(cfg: PipelineConfig, run_dir: Path, runtime: Runtime
              ) -> tuple[dict[str, Case], list[dict[str, list[str]]]]:
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        raise UsageError(f"{path} does not exist: train the folds first "
                         "(medseg train CONFIG -o RUN --folds K)")
    manifest = load_manifest(manifest_path(cfg, Path(str(cfg.data.cache_dir)), runtime))
    cases = {c.case_id: c for c in cv_cases(manifest.cases)}
    return cases, read_splits(path, list(cases))


def _check_trained(best: list[Path], folds: int) -> None:
    missing = [i for i, path in enumerate(best) if not path.is_file()]
    if missing:
        raise UsageError(f"fold(s) {', '.join(map(str, missing))} have no {BEST} in "
                         f"{best[missing[0]].parent}: train them first "
                         f"(--folds {folds} --fold {missing[0]})")


def _predict_fold(checkpoint: Path, cases: list[Case], cv: Path, fold: int,
                  runtime: Runtime) -> None:
    """Predict one fold's held-out ``cases`` (listed in ``cv/folds/fold_<i>.csv``)."""
    from medseg.inference.batch import predict_cases
    from medseg.inference.predict import PredictOptions
    from medseg.results import csv_text

    listing = cv / "folds" / f"fold_{fold}.csv"
    rows = ({"case_id": c.case_id, "image": ";".join(map(str, c.images)), "split": "test"}
            for c in cases)
    atomic_write_text(listing, csv_text(("case_id", "image", "split"), rows))
    predict_cases(checkpoint, listing, cv / "predictions", PredictOptions(keep_largest=False),
                  runtime)


def _link_labels(cases: Any, folder: Path) -> None:
    """``folder/<case><ext>`` -> each case's label file (names pair them with predictions)."""
    from medseg.io.formats import extension_of

    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = folder / f"{case.case_id}{extension_of(case.label) or '.nii.gz'}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(case.label).resolve())


def _case_dice(cv: Path, labels: list[int]
               ) -> tuple[list[dict[int, tuple[float, float]]], list[dict[int, LabelComponents]]]:
    """:func:`postprocess_dice` and :func:`case_components` of every out-of-fold case (one
    case in memory at a time)."""
    from medseg.evaluation import pair_cases
    from medseg.io import read_volume

    dice, components = [], []
    for _, pred, gt in pair_cases(cv / "predictions", cv / "labels"):
        p, g = read_volume(pred), read_volume(gt)
        p_arr, g_arr = (np.asarray(v.array).astype(np.int64) for v in (p, g))
        dice.append(postprocess_dice(p_arr, g_arr, labels))
        components.append(case_components(p_arr, g_arr, labels, p.spacing_mm))
    return dice, components
