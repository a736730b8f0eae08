"""Overlap metrics of one label: Dice, IoU (Jaccard), pixel accuracy and volumes in mL.

Everything here is derived from four voxel counts, so the caller can count
inside a label's bounding box and never build a full-volume mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.metrics.conventions import Convention, mask_status

__all__ = ["OverlapCounts", "count_overlap", "mask_dice", "overlap_metrics"]


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one label.

    Attributes
    ----------
    n_pred, n_gt : voxels of the label in the prediction / ground truth.
    n_both : voxels of the label in both (true positives).
    n_total : voxels in the whole array.
    """

    n_pred: int
    n_gt: int
    n_both: int
    n_total: int

    @property
    def status(self) -> str:
        """``ok``, ``empty_pred``, ``empty_gt`` or ``both_empty``."""
        return mask_status(self.n_pred, self.n_gt)


def count_overlap(pred_mask: np.ndarray, gt_mask: np.ndarray, n_total: int | None = None) -> OverlapCounts:
    """Count a label's voxels in two boolean masks of the same shape.

    Parameters
    ----------
    pred_mask, gt_mask : (x, y, z) bool arrays (possibly a crop that holds every
        voxel of the label).
    n_total : voxels of the full array when the masks are a crop; default
        ``pred_mask.size``.
    """
    return OverlapCounts(
        n_pred=int(np.count_nonzero(pred_mask)),
        n_gt=int(np.count_nonzero(gt_mask)),
        n_both=int(np.count_nonzero(pred_mask & gt_mask)),
        n_total=int(pred_mask.size if n_total is None else n_total),
    )


def overlap_metrics(
    counts: OverlapCounts, voxel_volume_mm3: float, convention: Convention
) -> dict[str, float]:
    """Dice, IoU, accuracy and volumes (mL) from ``counts``.

    Dice = 2 TP / (|P| + |G|); IoU = TP / |P u G|; accuracy = (TP + TN) / all
    voxels; volumes = voxel count x voxel volume / 1000 (mL). Dice and IoU
    of empty masks follow ``convention.empty``.
    """
    c = counts
    union = c.n_pred + c.n_gt - c.n_both
    true_negatives = c.n_total - union
    out = {"accuracy": (c.n_both + true_negatives) / c.n_total if c.n_total else float("nan")}
    if c.status == "ok":
        out["dice"] = 2.0 * c.n_both / (c.n_pred + c.n_gt)
        out["iou"] = c.n_both / union
    else:
        empty = convention.empty[c.status]
        out["dice"], out["iou"] = empty["dice"], empty["iou"]
    out["vol_pred_ml"] = c.n_pred * voxel_volume_mm3 / 1000.0
    out["vol_gt_ml"] = c.n_gt * voxel_volume_mm3 / 1000.0
    return out


def mask_dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice of two boolean masks of one grid (medseg's convention for one empty mask: 0);
    NaN when both are empty (such a pair counts in no mean)."""
    from medseg.metrics.conventions import get_convention

    counts = count_overlap(pred_mask, gt_mask)
    if counts.status == "both_empty":
        return float("nan")
    return float(overlap_metrics(counts, 1.0, get_convention("medseg"))["dice"])
