"""Out-of-fold evaluation of a cross-validation run and the post-processing it implies.

:func:`evaluate_cv` (``medseg train ... --folds K`` after the folds, or ``--evaluate-cv``):

1. each fold's ``best.safetensors`` predicts its held-out cases (``val`` of
   ``RUN/splits.json``) through :func:`medseg.inference.batch.predict_cases`, with no
   post-processing, into ``RUN/cv/predictions/<case>.nii.gz`` (the cases of fold ``i``
   are listed in ``RUN/cv/folds/fold_<i>.csv``);
2. :func:`medseg.evaluation.evaluate_folders` scores them against the labels (linked
   into ``RUN/cv/labels/``): ``RUN/cv/results.csv``, ``summary.csv``, ``summary.json``;
3. :func:`choose_postprocess` keeps the largest connected component of exactly the labels
   whose mean out-of-fold Dice it raises; the choice goes to ``RUN/cv/postprocessing.json``
   (with the Dice with and without) and into the model card of every fold's best checkpoint
   (:func:`medseg.checkpoint.update_card`), so ``medseg predict`` applies it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.card import Postprocess
from medseg.config import PipelineConfig
from medseg.data.manifest import Case, load_manifest
from medseg.data.splits import cv_cases, read_splits
from medseg.errors import UsageError
from medseg.io.atomic import atomic_write_text
from medseg.runtime import Runtime
from medseg.training.data import manifest_path
from medseg.training.folds import SPLITS_FILE, fold_dir, with_cache

__all__ = ["PostprocessChoice", "choose_postprocess", "evaluate_cv", "postprocess_dice"]

log = logging.getLogger(__name__)
BEST = "best.safetensors"


# -- the post-processing choice (pure functions on arrays) ------------------------------------
def postprocess_dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]
                     ) -> dict[int, tuple[float, float]]:
    """Dice of each label of one case, without and with keep-largest-component.

    ``pred``, ``gt``: (x, y, z) label maps on one grid. Dice = 2 |P n G| / (|P| + |G|);
    NaN when the label is in neither map (such cases do not count in the means).
    """
    from medseg.inference.postprocess import keep_largest_component

    kept = keep_largest_component(pred, only=labels)
    return {int(v): (_dice(pred == v, gt == v), _dice(kept == v, gt == v)) for v in labels}


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    from medseg.metrics import get_convention
    from medseg.metrics.overlap import count_overlap, overlap_metrics

    counts = count_overlap(pred, gt)
    if counts.status == "both_empty":
        return math.nan
    return float(overlap_metrics(counts, 1.0, get_convention("medseg"))["dice"])


@dataclass(frozen=True)
class PostprocessChoice:
    """Mean out-of-fold Dice per label without and with keep-largest, and the choice.

    ``postprocess`` keeps the largest component of the labels whose mean Dice rises
    (strictly); ``dice_without`` / ``dice_with``: label value -> mean Dice over the
    cases where the label is present (in the prediction or the ground truth).
    """

    postprocess: Postprocess
    dice_without: dict[int, float]
    dice_with: dict[int, float]

    def chosen_dice(self) -> dict[int, float]:
        """Mean Dice per label as the chosen post-processing leaves it."""
        only = self.postprocess.largest_only
        return {v: self.dice_with[v] if only is None or v in only else d
                for v, d in self.dice_without.items()}

    def to_dict(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON form (``RUN/cv/postprocessing.json``); NaN is written as null."""
        only = self.postprocess.largest_only
        labels = {names.get(v, str(v)) if names else str(v): {
            "value": v, "dice_without": _num(d), "dice_with_keep_largest": _num(self.dice_with[v]),
            "keep_largest": only is None or v in only} for v, d in self.dice_without.items()}
        return {"postprocess": self.postprocess.to_dict(),
                "mean_dice_without": _num(_mean(self.dice_without.values())),
                "mean_dice_with": _num(_mean(self.chosen_dice().values())), "labels": labels}


def _mean(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def choose_postprocess(per_case: Sequence[Mapping[int, tuple[float, float]]]
                       ) -> PostprocessChoice:
    """Keep-largest for exactly the labels whose mean Dice it raises.

    ``per_case``: one :func:`postprocess_dice` result per out-of-fold case.
    """
    labels = sorted({v for case in per_case for v in case})
    without = {v: _mean(c[v][0] for c in per_case if v in c) for v in labels}
    with_kept = {v: _mean(c[v][1] for c in per_case if v in c) for v in labels}
    chosen = tuple(v for v in labels if with_kept[v] > without[v])
    keep: bool | tuple[int, ...] = True if chosen and len(chosen) == len(labels) else chosen
    return PostprocessChoice(Postprocess(keep_largest=keep), without, with_kept)


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
    choice = choose_postprocess(_case_dice(cv, sorted(names)))
    atomic_write_text(cv / "postprocessing.json",
                      json.dumps(choice.to_dict(names), indent=1) + "\n")
    for path in best:
        update_card(path, load_checkpoint(path).card.replace(postprocess=choice.postprocess))
    log.info("out-of-fold mean Dice %.4f (post-processing %s: %.4f) -> %s",
             _mean(choice.dice_without.values()), choice.postprocess.to_dict(),
             _mean(choice.chosen_dice().values()), cv)
    return choice


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


def _case_dice(cv: Path, labels: list[int]) -> list[dict[int, tuple[float, float]]]:
    """:func:`postprocess_dice` of every out-of-fold case (one case in memory at a time)."""
    from medseg.evaluation import pair_cases
    from medseg.io import read_volume

    out = []
    for _, pred, gt in pair_cases(cv / "predictions", cv / "labels"):
        p, g = (np.asarray(read_volume(f).array) for f in (pred, gt))
        out.append(postprocess_dice(p.astype(np.int64), g.astype(np.int64), labels))
    return out
