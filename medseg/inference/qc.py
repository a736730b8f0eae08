"""Per-case quality control: how far to trust each label of a prediction.

Computed where the prediction is made (:func:`medseg.inference.predict.predict_case` with
``PredictOptions(qc=True)``) from the members' outputs (:mod:`medseg.inference.members`),
the final label map, the image and the training cohort the model card carries
(:class:`medseg.confidence.Confidence`). One row per foreground label, columns
:data:`QC_COLUMNS`:

* ``estimated_dice`` (0-1): the soft Dice of the members' mean calibrated probability
  ``q_l`` against the predicted label ``P_l`` on the network grid,
  ``2 sum_{v in P_l} q_l(v) / (|P_l| + sum_v q_l(v))``: the Dice the prediction expects
  against labels drawn voxel by voxel from ``q`` (numerator and denominator in
  expectation). Members that disagree, and a calibrated model that is unsure, lower it.
  When nothing is predicted, ``prod_v (1 - q_l(v))``: the chance that the truth is empty
  too (Dice 1; else 0). With a calibration reference (the card's
  :class:`~medseg.confidence.LabelReference`), plus its ``dice_offset`` (clipped to [0, 1]):
  the soft Dice of a calibrated model is biased low, and the offset measured on its
  calibration cases removes the bias (it does not change the ranking of cases).
* ``uncertain_fraction``: of the voxels where ``q_l > t``, the fraction where
  ``t < q_l < 1 - t`` (``t`` = ``uncertain_probability``, 0.1); 0 where no voxel has
  ``q_l > t``.
* ``volume_ml`` and ``components`` (large connected components,
  :func:`medseg.confidence.large_components`) of the final label map on the input grid.
* ``volume_z``: the volume's z score against the training volumes; ``input_z``: of the
  image statistics (:func:`medseg.confidence.image_measures`, and the field of view of
  :func:`medseg.confidence.extent_measures`, only where smaller) against the training
  images, the one furthest from the cohort (signed); both empty without a cohort.
* ``flag`` (``ok`` / ``review`` / ``fail``) and ``reasons`` as the card's
  :class:`~medseg.confidence.QcThresholds` decide (:func:`verdict`).

The uncertainty map (``PredictOptions(uncertainty=True)``) has two channels on the input
grid, float16: the entropy of the members' mean probabilities and the members'
disagreement (mutual information: that entropy minus the mean of the members' entropies),
both divided by log K (0..1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.confidence import (IMAGE_STATS, Cohort, Confidence, LabelReference, QcThresholds,
                               extent_measures, image_measures, label_measures)
from medseg.volume import LabelMap, Volume

__all__ = ["FLAGS", "QC_COLUMNS", "CaseQc", "grid_measures", "qc_rows", "verdict"]

log = logging.getLogger(__name__)

QC_COLUMNS = ("case", "label", "label_name", "estimated_dice", "volume_ml", "uncertain_fraction",
              "components", "volume_z", "input_z", "flag", "reasons")
FLAGS = ("ok", "review", "fail")


@dataclass
class CaseQc:
    """What a prediction knows about itself: QC rows (without ``case``) and, when asked,
    the uncertainty map (2, x, y, z) float16 on the input grid."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    uncertainty: Volume | None = None


def grid_measures(mean_probabilities: torch.Tensor, predicted: torch.Tensor,
                  labels: Sequence[int], t: float) -> dict[int, tuple[float, float]]:
    """Per label: (estimated Dice, uncertain fraction) on the network grid (module docstring).

    Parameters
    ----------
    mean_probabilities : (K, x', y', z') the members' mean calibrated probabilities.
    predicted : (x', y', z') the predicted labels on the same grid.
    labels : the foreground label values (channel index = label value).
    t : the ``uncertain_probability`` threshold.
    """
    out = {}
    for value in labels:
        q = mean_probabilities[value].double()
        mask = predicted == value
        predicted_voxels = int(mask.sum())
        if predicted_voxels:
            dice = 2.0 * float(q[mask].sum()) / (predicted_voxels + float(q.sum()))
        else:  # the chance that the truth is empty too
            dice = float(torch.exp(torch.log1p(-q.clamp(max=1 - 1e-12)).sum()))
        possible = q > t
        n_possible = int(possible.sum())
        unsure = int((possible & (q < 1.0 - t)).sum())
        out[int(value)] = (dice, unsure / n_possible if n_possible else 0.0)
    return out


def input_z(image: Volume, cohort: Cohort | None, margin: float
            ) -> tuple[float, str | None, bool]:
    """(z, statistic, blank): the image statistic furthest from the training images (signed
    z, NaN without a cohort), its name, and whether a channel is constant.

    The statistics are the intensities of :func:`~medseg.confidence.image_measures` per
    channel and, when the cohort has them, the field of view of
    :func:`~medseg.confidence.extent_measures` (mm; sd floor ``margin`` x the cohort's mean).
    A field of view counts only when it is *smaller* than the cohort's (the anatomy may be
    cut off; a larger one is what a sliding window is for): its z is capped at 0.
    """
    stats = image_measures(image.array, image.has_channels)
    blank = any(s["p99"] == s["p01"] for s in stats)
    if cohort is None or len(cohort.image) != len(stats):
        return math.nan, None, blank
    candidates = []
    for own, ref in zip(stats, cohort.image):
        span = abs(ref["p99"].mean - ref["p01"].mean)
        for stat in IMAGE_STATS:
            floor = margin if stat == "median_position" else margin * span
            candidates.append((ref[stat].z(own[stat], floor), stat))
    if cohort.extent is not None:
        own = extent_measures(image.affine, image.spatial_shape)
        for stat, ref in cohort.extent.items():
            candidates.append((min(ref.z(own[stat], margin * abs(ref.mean)), 0.0), stat))
    z, name = max(candidates, key=lambda c: abs(c[0]))
    return z, name, blank


def qc_rows(image: Volume, labels: LabelMap, grid: Mapping[int, tuple[float, float]],
            names: Mapping[int, str], confidence: Confidence | None) -> list[dict[str, Any]]:
    """The QC rows of one case (without ``case``): one per foreground label of ``names``."""
    conf = confidence or Confidence()
    th, cohort = conf.thresholds, conf.cohort
    values = [v for v in names if v != 0]
    measures = label_measures(labels.array, labels.voxel_volume_ml, values,
                              th.component_fraction)
    z_in, stat, blank = input_z(image, cohort, th.margin)
    rows = []
    for value in values:
        volume, comps = measures[value]
        dice, unsure = grid.get(value, (math.nan, math.nan))
        reference = conf.reference.get(value)
        if reference is not None and math.isfinite(dice):
            dice = min(max(dice + reference.dice_offset, 0.0), 1.0)
        ref = None if cohort is None else cohort.labels.get(value)
        z_vol = math.nan if ref is None else ref.volume_ml.z(
            volume, th.margin * abs(ref.volume_ml.mean))
        row = {"label": value, "label_name": names[value], "estimated_dice": dice,
               "volume_ml": volume, "uncertain_fraction": unsure, "components": comps,
               "volume_z": z_vol, "input_z": z_in}
        flag, reasons = verdict(row, th, cohort, stat, blank, reference)
        row.update(flag=flag, reasons="; ".join(reasons))
        rows.append(row)
    return rows


def verdict(row: Mapping[str, Any], th: QcThresholds, cohort: Cohort | None = None,
            input_stat: str | None = None, blank: bool = False,
            reference: LabelReference | None = None) -> tuple[str, list[str]]:
    """The flag of one QC row and its reasons, the failing ones first.

    Fail: a blank image; estimated Dice < ``dice_fail``; |volume z| > ``volume_z_fail``;
    |input z| > ``input_z_fail``; an empty label that at least ``absent_fail`` of the
    training cases hold. Review: estimated Dice < ``dice_review``; |volume z| >
    ``volume_z_review``; |input z| > ``input_z_review``; the uncertain fraction more than
    ``uncertain_z_review`` SD above the calibration cases' (``reference``; without one:
    above ``uncertain_review``); more large components than any training case.
    """
    fail: list[str] = []
    review: list[str] = []
    if blank:
        fail.append("image is blank (constant intensity)")
    dice = row["estimated_dice"]
    if math.isfinite(dice) and dice < th.dice_review:
        (fail if dice < th.dice_fail else review).append(f"estimated Dice {dice:.2f}")
    z = row["volume_z"]
    if math.isfinite(z) and abs(z) > th.volume_z_review:
        text = f"volume {abs(z):.1f} SD {'above' if z > 0 else 'below'} training"
        (fail if abs(z) > th.volume_z_fail else review).append(text)
    elif math.isinf(z):
        fail.append(f"volume {row['volume_ml']:.1f} mL, training always "
                    f"{cohort.labels[row['label']].volume_ml.mean:.1f} mL" if cohort else
                    "volume unlike training")
    z = row["input_z"]
    if not blank and not math.isnan(z) and abs(z) > th.input_z_review:
        (fail if abs(z) > th.input_z_fail else review).append(_input_reason(z, input_stat,
                                                                            cohort))
    ref = None if cohort is None else cohort.labels.get(row["label"])
    if ref is not None and row["volume_ml"] == 0 and ref.present >= th.absent_fail:
        fail.append(f"no {row['label_name']} found (present in {ref.present:.0%} of "
                    "training cases)")
    if ref is not None and row["components"] > ref.components.max:
        review.append(f"{row['components']} large components (training: at most "
                      f"{ref.components.max:g})")
    unsure = row["uncertain_fraction"]
    if math.isfinite(unsure):
        if reference is None and unsure > th.uncertain_review:
            review.append(f"{unsure:.0%} of the structure uncertain")
        elif reference is not None:
            spread = reference.uncertain_fraction
            z = spread.z(unsure, th.margin * abs(spread.mean))
            if z > th.uncertain_z_review:
                review.append(f"{unsure:.0%} of the structure uncertain ({min(z, 999):.1f} SD "
                              f"above the calibration cases' {spread.mean:.0%})")
    flag = "fail" if fail else "review" if review else "ok"
    return flag, fail + review


def _input_reason(z: float, stat: str | None, cohort: Cohort | None) -> str:
    """The reason text of an input unlike training: a field of view smaller than the
    cohort's, or intensities unlike it."""
    if stat is not None and cohort is not None and cohort.extent and stat in cohort.extent:
        axis = {"extent_lr": "left-right", "extent_ap": "front-back",
                "extent_si": "head-foot"}[stat]
        return (f"field of view {abs(z):.1f} SD smaller than training along {axis} "
                f"(training {cohort.extent[stat].mean:.0f} mm): is the anatomy cut off?")
    kind = f"a {cohort.modality}" if cohort and cohort.modality else "the training modality"
    return (f"image intensities unlike training ({stat} {min(abs(z), 999):.1f} SD "
            f"{'above' if z > 0 else 'below'}): is this {kind}?")


def missing_cohort_message(source: str) -> str:
    """The one warning of ``--qc`` on a model whose card has no training cohort."""
    return (f"{source} carries no training cohort in its model card: QC columns volume_z and "
            "input_z are empty, and no volume, component, absent-label or image-intensity "
            "check is made (estimated_dice, uncertain_fraction, volume_ml and components are "
            "filled); add a cohort with `medseg calibrate MODEL --images DIR --labels DIR`")


def qc_summary(rows: Sequence[Mapping[str, Any]], th: QcThresholds) -> dict[str, Any]:
    """Counts of flags over rows and over cases (a case takes its worst row's flag), and the
    thresholds that decided them."""
    worst: dict[str, int] = {}
    for row in rows:
        rank = FLAGS.index(row["flag"])
        worst[row["case"]] = max(worst.get(row["case"], 0), rank)
    return {"rows": {f: sum(r["flag"] == f for r in rows) for f in FLAGS},
            "cases": {f: sum(v == i for v in worst.values()) for i, f in enumerate(FLAGS)},
            "thresholds": th.to_dict()}


def uncertainty_volume(run: Any, history: Any, volume: Volume, device: Any) -> Volume:
    """The two uncertainty channels (module docstring) on exactly the input grid, float16."""
    from medseg.inference.members import normalised
    from medseg.volume import RegionProbabilities

    mean = run.mean_probabilities
    logp = mean.clamp(min=1e-30).log()
    entropy = -(mean * logp).sum(dim=0)
    k = mean.shape[0]
    maps = torch.stack([normalised(entropy, k),
                        normalised((entropy - run.member_entropy).clamp_(min=0), k)])
    grid = RegionProbabilities(maps.cpu().numpy().astype(np.float32), history.output_affine)
    back = history.invert(grid, device)
    array = np.clip(back.array, 0.0, 1.0).astype(np.float16)
    return RegionProbabilities(array, volume.affine, volume.meta)
