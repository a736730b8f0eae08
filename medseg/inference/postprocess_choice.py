"""Choosing post-processing from predictions scored against ground truth.

Pure functions on (x, y, z) label maps, used wherever held-out predictions exist: the
out-of-fold predictions of a cross-validation run (:func:`medseg.crossval.evaluate_cv`) and
the final validation of a single training run (:mod:`medseg.training.validation`).

The rule is nnU-Net's ``determine_postprocessing``: keep the largest connected component
of a label only where that raises its mean held-out Dice (strictly); medseg adds the
removal of components under a volume (mL) for the other labels, chosen the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.card import Postprocess

__all__ = ["LabelComponents", "PostprocessChoice", "case_components", "choose_min_size",
           "choose_postprocess", "postprocess_dice"]

FIXED_MIN_SIZES_ML = (0.01, 0.1, 1.0)
"""Minimum component volumes (mL) always tried, besides those from the false positives."""
FP_QUANTILES = (0.25, 0.5, 0.75, 0.9, 1.0)
"""Quantiles of the false-positive component volumes tried as minimum sizes."""



def postprocess_dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence[int]
                     ) -> dict[int, tuple[float, float]]:
    """Dice of each label of one case, without and with keep-largest-component.

    ``pred``, ``gt``: (x, y, z) label maps on one grid. Dice = 2 |P n G| / (|P| + |G|);
    NaN when the label is in neither map (such cases do not count in the means).
    """
    from medseg.inference.postprocess import keep_largest_component
    from medseg.metrics.overlap import mask_dice

    kept = keep_largest_component(pred, only=labels)
    return {int(v): (mask_dice(pred == v, gt == v), mask_dice(kept == v, gt == v))
            for v in labels}


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

    def mean_dice(self, chosen: bool = True) -> float:
        """Mean over labels of the mean Dice with the chosen post-processing (``chosen``)
        or without any; NaN where no label has a finite value."""
        return _mean((self.chosen_dice() if chosen else self.dice_without).values())

    def to_dict(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """JSON form (``RUN/cv/postprocessing.json``); NaN is written as null."""
        only, sizes = self.postprocess.largest_only, self.postprocess.min_size_ml
        labels = {names.get(v, str(v)) if names else str(v): {
            "value": v, "dice_without": _num(d), "dice_with_keep_largest": _num(self.dice_with[v]),
            "keep_largest": only is None or v in only, "min_size_ml": sizes.get(v),
            "dice_with_min_size": _num(self.dice_min_size.get(v, math.nan))}
            for v, d in self.dice_without.items()}
        return {"postprocess": self.postprocess.to_dict(),
                "mean_dice_without": _num(self.mean_dice(chosen=False)),
                "mean_dice_with": _num(self.mean_dice()), "labels": labels}


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
