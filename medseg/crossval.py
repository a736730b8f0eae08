"""Out-of-fold evaluation of a cross-validation run and the post-processing it implies.

:func:`evaluate_cv` (``medseg train ... --folds K`` after the folds, or ``--evaluate-cv``):

1. each fold's ``best.safetensors`` predicts its held-out cases (``val`` of
   ``RUN/splits.json``) through :func:`medseg.inference.batch.predict_cases`, with no
   post-processing, into ``RUN/cv/predictions/<case>.nii.gz`` (the cases of fold ``i``
   are listed in ``RUN/cv/folds/fold_<i>.csv``);
2. :func:`medseg.evaluation.evaluate_folders` scores them against the labels (linked
   into ``RUN/cv/labels/``): ``RUN/cv/results.csv``, ``summary.csv``, ``summary.json``;
3. :func:`choose_postprocess` keeps the largest connected component of exactly the labels
   whose mean out-of-fold Dice it raises; for the other labels it removes the components
   under a volume (:func:`choose_min_size`) where that raises their mean Dice. The choice
   goes to ``RUN/cv/postprocessing.json`` (with the Dice with and without) and into the
   model card of every fold's best checkpoint (:func:`medseg.checkpoint.update_card`), so
   ``medseg predict`` applies it;
4. a temperature (and one per label where it helps) is fitted on the held-out probabilities
   of every fold, pooled (:func:`medseg.inference.calibration.calibrate_folds`,
   foreground-near voxels), and
   stored in the same cards; the expected calibration error before and after and the
   reliability curves go to ``RUN/cv/calibration.json``.

The rule is nnU-Net's ``determine_postprocessing`` (a step is kept only where it raises
the out-of-fold mean Dice of the label), with component removal by size added.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.card import Postprocess
from medseg.confidence import Confidence
from medseg.config import PipelineConfig
from medseg.data.manifest import load_manifest
from medseg.data.splits import cv_cases, read_splits
from medseg.errors import UsageError
from medseg.io.atomic import atomic_write_text
from medseg.io.cases import Case
from medseg.runtime import Runtime
from medseg.training.data import manifest_path
from medseg.training.folds import SPLITS_FILE, fold_dir, with_cache

__all__ = ["LabelComponents", "PostprocessChoice", "case_components", "choose_min_size",
           "choose_postprocess", "evaluate_cv", "postprocess_dice"]

log = logging.getLogger(__name__)
BEST = "best.safetensors"
FIXED_MIN_SIZES_ML = (0.01, 0.1, 1.0)
"""Minimum component volumes (mL) always tried, besides those from the false positives."""
FP_QUANTILES = (0.25, 0.5, 0.75, 0.9, 1.0)
"""Quantiles of the false-positive component volumes tried as minimum sizes."""


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
class LabelComponents:
    """The predicted connected components of one label in one case, against its ground truth.

    ``size_voxels`` and ``overlap_voxels`` (n,): each component's voxels and those of them
    inside the ground truth; ``voxel_ml``: one voxel's volume in mL; ``gt_voxels``: voxels
    of the label in the ground truth.
    """

    size_voxels: np.ndarray
    overlap_voxels: np.ndarray
    voxel_ml: float
    gt_voxels: int

    def dice(self, min_size_ml: float = 0.0) -> float:
        """Dice 2 |P n G| / (|P| + |G|) once components under ``min_size_ml`` mL are
        removed from the prediction; NaN when both are empty."""
        kept = self.size_voxels * self.voxel_ml >= min_size_ml
        pred, inter = int(self.size_voxels[kept].sum()), int(self.overlap_voxels[kept].sum())
        if pred + self.gt_voxels == 0:
            return math.nan
        return 2.0 * inter / (pred + self.gt_voxels)

    def false_positive_ml(self) -> np.ndarray:
        """Volumes (mL) of the components that do not touch the ground truth."""
        return self.size_voxels[self.overlap_voxels == 0] * self.voxel_ml


def case_components(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int],
                    spacing_mm: Sequence[float]) -> dict[int, LabelComponents]:
    """:class:`LabelComponents` of each label of one case: ``pred``, ``gt`` (x, y, z) label
    maps on one grid of ``spacing_mm`` (x, y, z; mm); components as
    :func:`medseg.inference.postprocess.remove_small_components` finds them."""
    from medseg.inference.postprocess import label_components, voxel_ml

    per_voxel = voxel_ml(spacing_mm)
    empty = np.zeros(0, np.int64)
    out = {int(v): LabelComponents(empty, empty, per_voxel, int(np.count_nonzero(gt == v)))
           for v in labels}
    for value, box, components, count in label_components(pred, labels):
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        overlap = np.bincount(components[gt[box] == value], minlength=count + 1)[1:]
        out[value] = LabelComponents(sizes, overlap, per_voxel, out[value].gt_voxels)
    return out


def _min_size_candidates(tables: Sequence[LabelComponents]) -> list[float]:
    """``FIXED_MIN_SIZES_ML`` and, just above each ``FP_QUANTILES`` quantile of the
    false-positive volumes, a value that removes that component (2 significant digits)."""
    fp = np.concatenate([t.false_positive_ml() for t in tables] + [np.zeros(0)])
    found = {_just_above(float(q)) for q in np.quantile(fp, FP_QUANTILES)} if fp.size else set()
    return sorted(set(FIXED_MIN_SIZES_ML) | found)


def _just_above(ml: float) -> float:
    """The smallest 2-significant-digit number above ``ml`` (0.0123 -> 0.013, 0.5 -> 0.51)."""
    unit = 10.0 ** (math.floor(math.log10(ml)) - 1)
    return float(f"{(math.floor(ml / unit) + 1) * unit:.3g}")


def choose_min_size(per_case: Sequence[Mapping[int, LabelComponents]], labels: Sequence[int]
                    ) -> dict[int, tuple[float, float]]:
    """Per label, the minimum component volume (mL) that raises its mean out-of-fold Dice most.

    ``per_case``: one :func:`case_components` result per case. Tried: the candidates of
    :func:`_min_size_candidates`; kept only when the mean Dice (over the cases where the
    label is in the prediction or the ground truth) rises strictly; among equals the smallest.
    Returns label -> (volume in mL, mean Dice with it), for the labels where one was kept.
    """
    out = {}
    for v in labels:
        tables = [case[v] for case in per_case if v in case]
        best, chosen = _mean(t.dice() for t in tables), None
        for ml in _min_size_candidates(tables):
            dice = _mean(t.dice(ml) for t in tables)
            if dice > best:
                best, chosen = dice, ml
        if chosen is not None:
            out[int(v)] = (chosen, best)
    return out


@dataclass(frozen=True)
class PostprocessChoice:
    """Mean out-of-fold Dice per label without and with keep-largest, and the choice.

    ``postprocess`` keeps the largest component of the labels whose mean Dice rises
    (strictly), and removes small components of others where that raises it;
    ``dice_without`` / ``dice_with``: label value -> mean Dice over the cases where the
    label is present (in the prediction or the ground truth) without post-processing and
    with keep-largest; ``dice_min_size``: with the chosen minimum size (those labels only).
    """

    postprocess: Postprocess
    dice_without: dict[int, float]
    dice_with: dict[int, float]
    dice_min_size: dict[int, float] = field(default_factory=dict)

    def chosen_dice(self) -> dict[int, float]:
        """Mean Dice per label as the chosen post-processing leaves it."""
        only = self.postprocess.largest_only
        return {v: self.dice_with[v] if only is None or v in only else
                self.dice_min_size.get(v, d) for v, d in self.dice_without.items()}

    def to_dict(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON form (``RUN/cv/postprocessing.json``); NaN is written as null."""
        only, sizes = self.postprocess.largest_only, self.postprocess.min_size_ml
        labels = {names.get(v, str(v)) if names else str(v): {
            "value": v, "dice_without": _num(d), "dice_with_keep_largest": _num(self.dice_with[v]),
            "keep_largest": only is None or v in only, "min_size_ml": sizes.get(v),
            "dice_with_min_size": _num(self.dice_min_size.get(v, math.nan))}
            for v, d in self.dice_without.items()}
        return {"postprocess": self.postprocess.to_dict(),
                "mean_dice_without": _num(_mean(self.dice_without.values())),
                "mean_dice_with": _num(_mean(self.chosen_dice().values())), "labels": labels}


def _mean(values: Any) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def choose_postprocess(per_case: Sequence[Mapping[int, tuple[float, float]]],
                       components: Sequence[Mapping[int, LabelComponents]] | None = None
                       ) -> PostprocessChoice:
    """Keep-largest for exactly the labels whose mean Dice it raises; for the others, with
    ``components``, a minimum component size where one raises it (:func:`choose_min_size`).

    ``per_case``: one :func:`postprocess_dice` result per out-of-fold case;
    ``components``: one :func:`case_components` result per case, in the same order.
    """
    labels = sorted({v for case in per_case for v in case})
    without = {v: _mean(c[v][0] for c in per_case if v in c) for v in labels}
    with_kept = {v: _mean(c[v][1] for c in per_case if v in c) for v in labels}
    chosen = tuple(v for v in labels if with_kept[v] > without[v])
    keep: bool | tuple[int, ...] = True if chosen and len(chosen) == len(labels) else chosen
    rest = [v for v in labels if v not in chosen]
    sizes = choose_min_size(components, rest) if components is not None else {}
    post = Postprocess(keep_largest=keep, min_size_ml={v: ml for v, (ml, _) in sizes.items()})
    return PostprocessChoice(post, without, with_kept, {v: d for v, (_, d) in sizes.items()})


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
             _mean(choice.dice_without.values()), choice.postprocess.to_dict(),
             _mean(choice.chosen_dice().values()), cv)
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
