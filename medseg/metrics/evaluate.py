"""``evaluate_arrays``: every metric for every label of two integer label maps.

One pass over each array finds the labels, their voxel counts and bounding
boxes; each label's work (overlap counts, surfaces, distances) then runs on
its own crop (union of both bounding boxes plus a one-voxel margin).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from medseg.errors import GeometryError, UsageError
from medseg.metrics.conventions import Convention, get_convention
from medseg.metrics.overlap import OverlapCounts, count_overlap, overlap_metrics
from medseg.metrics.surface import surface_distances, surface_metrics
from medseg.volume import label_array as check_label_array  # the one check of label values

__all__ = ["METRIC_KEYS", "evaluate_arrays", "check_label_array", "check_spacing", "present_labels"]

#: Metric keys of each label's dict, in column order (``status`` follows).
METRIC_KEYS = (
    "dice", "iou", "accuracy", "hd_mm", "hd95_mm", "avd_mm", "assd_mm", "nsd",
    "vol_pred_ml", "vol_gt_ml",
)
_SURFACE_KEYS = ("hd_mm", "hd95_mm", "avd_mm", "assd_mm", "nsd")
_FIND_OBJECTS_MAX = 1 << 24  # largest label value + 1 (find_objects lists one box per value)


def evaluate_arrays(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float],
    labels: Iterable[int] | None = None,
    convention: str = "medseg",
    nsd_tolerance_mm: float = 1.0,
    *,
    workers: int | None = None,
) -> dict[int, dict[str, float | str]]:
    """Overlap and surface metrics of each label of a predicted and a true label map.

    Parameters
    ----------
    pred, gt : (x, y, z) arrays of non-negative integer labels (0 = background),
        same shape, on the same grid. Bool arrays count as label 1; float
        arrays are accepted when every value is a whole number.
    spacing_mm : voxel size in mm along (x, y, z); required (no unit default).
    labels : labels to score (positive integers); default every non-zero
        value found in either array. A label absent from both gets a
        ``both_empty`` row.
    convention : ``"medseg"`` (default), ``"monai"``, ``"deepmind"`` or
        ``"medpy"``; see :mod:`medseg.metrics` for what each one means.
    nsd_tolerance_mm : tolerance of the surface Dice (NSD), in mm.
    workers : threads scoring labels in parallel (default: the CPUs available to
        this process; 1 = sequential). The results do not depend on it.

    Returns
    -------
    dict
        ``{label: {"dice", "iou", "accuracy", "hd_mm", "hd95_mm", "avd_mm",
        "assd_mm", "nsd", "vol_pred_ml", "vol_gt_ml": float, "status": str}}``
        with ``status`` one of ``ok``, ``empty_pred``, ``empty_gt``,
        ``both_empty``. Distances in mm, volumes in mL.

    Raises
    ------
    GeometryError
        Shapes differ or are not 3D.
    DataError
        Negative, non-integer or NaN labels.
    UsageError
        Bad spacing, tolerance, label list or convention name.

    Examples
    --------
    >>> gt = np.zeros((8, 8, 8), np.uint8); gt[2:6, 2:6, 2:6] = 1
    >>> m = evaluate_arrays(gt, gt, (1.0, 1.0, 2.0))[1]
    >>> m["dice"], m["hd95_mm"], m["vol_gt_ml"], m["status"]
    (1.0, 0.0, 0.128, 'ok')
    """
    conv = get_convention(convention)
    spacing = check_spacing(spacing_mm)
    tolerance = _check_tolerance(nsd_tolerance_mm)
    pred = check_label_array(pred, "pred")
    gt = check_label_array(gt, "gt")
    if pred.shape != gt.shape:
        raise GeometryError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")
    region = _nonzero_region(pred, gt)  # all work below stays inside the labelled region
    pred_r, gt_r = pred[region], gt[region]
    boxes = (_boxes(pred_r), _boxes(gt_r))
    wanted = _labels_to_score(labels, boxes)
    voxel_mm3 = float(np.prod(spacing))

    cpus = _thread_count(workers, len(wanted) * 2)
    threads = max(1, min(cpus, len(wanted)))
    per_label = (conv, tolerance, cpus // threads)  # spare threads search both directions

    def score(label: int) -> dict[str, float | str]:
        return _evaluate_label(pred_r, gt_r, pred.size, label, boxes, spacing, voxel_mm3,
                               per_label)

    if threads == 1:
        return {label: score(label) for label in wanted}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:  # KD-trees and ndimage drop the GIL
        return dict(zip(wanted, pool.map(score, wanted)))


def _thread_count(workers: int | None, jobs: int) -> int:
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1 or None, got {workers!r}")
    return max(1, min(workers, jobs))


def check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """Three positive finite voxel sizes in mm, or UsageError."""
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        raise UsageError(f"spacing_mm must be three numbers in mm, got {spacing_mm!r}") from None
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UsageError(f"spacing_mm must be three positive numbers in mm, got {spacing_mm!r}")
    return spacing  # type: ignore[return-value]


def _check_tolerance(value: float) -> float:
    tolerance = float(value)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"nsd_tolerance_mm must be a finite number >= 0, got {value!r}")
    return tolerance


def present_labels(array: np.ndarray) -> list[int]:
    """Sorted non-zero labels of an integer label map (no full-size temporary)."""
    return [i + 1 for i, box in enumerate(_boxes(array[_nonzero_region(array)])) if box is not None]


def _nonzero_region(*arrays: np.ndarray) -> tuple[slice, ...]:
    """Smallest box (slices) holding every non-zero voxel of ``arrays``.

    One pass over each array gives its (x, y) footprint; the z extent is then
    read inside that footprint only.
    """
    lo, hi = [np.inf] * 3, [-1] * 3
    for array in arrays:
        plane = _footprint(array)
        xs, ys = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if not xs.size:
            continue
        column = array[xs[0] : xs[-1] + 1, ys[0] : ys[-1] + 1].max(axis=(0, 1))
        for a, nz in enumerate((xs, ys, np.flatnonzero(column))):
            lo[a], hi[a] = min(lo[a], nz[0]), max(hi[a], nz[-1])
    if hi[0] < 0:
        return (slice(0, 0),) * 3
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))


def _footprint(array: np.ndarray) -> np.ndarray:
    """(x, y) bool: True where the column ``array[x, y, :]`` holds a non-zero value.

    The contiguous last axis of an integer array is read as 8-, 4- or 2-byte words
    (a word is non-zero exactly when one of its values is), which roughly
    halves the cost of this full-volume pass.
    """
    if not array.size:
        return np.zeros(array.shape[:2], dtype=bool)
    row_bytes = array.shape[2] * array.itemsize
    if array.dtype.kind in "biu" and array.flags.c_contiguous:
        word = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
        return array.view(f"u{word}").max(axis=2) != 0
    return array.max(axis=2) != 0


def _labels_to_score(labels: Iterable[int] | None, boxes: tuple) -> list[int]:
    if labels is None:
        return sorted({i + 1 for b in boxes for i, box in enumerate(b) if box is not None})
    wanted = []
    for label in labels:
        if isinstance(label, bool) or not float(label).is_integer() or int(label) < 1:
            raise UsageError(f"labels must be positive integers (0 is background), got {label!r}")
        wanted.append(int(label))
    return sorted(set(wanted))


def _boxes(array: np.ndarray) -> list:
    """Bounding box (slices) of each label, index label-1; None when absent."""
    from scipy import ndimage

    if not array.size:
        return []
    high = int(array.max())
    if high >= _FIND_OBJECTS_MAX:
        raise UsageError(f"label values up to {_FIND_OBJECTS_MAX - 1} are supported, got {high}")
    if array.dtype.kind == "u" and array.dtype.itemsize > 4:
        array = array.astype(np.int64)
    return ndimage.find_objects(array)


def _union_box(boxes: tuple, label: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    found = [b[label - 1] for b in boxes if label <= len(b) and b[label - 1] is not None]
    start = [min(b[a].start for b in found) for a in range(3)]
    stop = [max(b[a].stop for b in found) for a in range(3)]
    return tuple(slice(max(s - 1, 0), min(e + 1, n)) for s, e, n in zip(start, stop, shape))


def _crop(array: np.ndarray, label: int, box: tuple[slice, ...]) -> np.ndarray:
    """Boolean mask of ``label`` inside ``box``, padded so that every face is background."""
    mask = array[box] == label
    pad = [
        (1 if s.start == 0 else 0, 1 if s.stop == n else 0)
        for s, n in zip(box, array.shape)
    ]
    return np.pad(mask, pad) if any(any(p) for p in pad) else mask


def _evaluate_label(
    pred: np.ndarray,
    gt: np.ndarray,
    n_total: int,
    label: int,
    boxes: tuple,
    spacing: tuple[float, float, float],
    voxel_mm3: float,
    per_label: tuple[Convention, float, int],
) -> dict[str, float | str]:
    conv, tolerance, workers = per_label
    if not any(label <= len(b) and b[label - 1] is not None for b in boxes):
        counts = OverlapCounts(0, 0, 0, n_total)
        pred_mask = gt_mask = None
    else:
        box = _union_box(boxes, label, pred.shape)
        pred_mask, gt_mask = _crop(pred, label, box), _crop(gt, label, box)
        counts = count_overlap(pred_mask, gt_mask, n_total=n_total)
    row: dict[str, float | str] = dict(overlap_metrics(counts, voxel_mm3, conv))
    if counts.status == "ok":
        distances = surface_distances(pred_mask, gt_mask, spacing, conv, workers=workers)
        row.update(surface_metrics(distances, conv, tolerance))
    else:
        row.update({k: conv.empty[counts.status][k] for k in _SURFACE_KEYS})
    out: dict[str, float | str] = {k: float(row[k]) for k in METRIC_KEYS}
    out["status"] = counts.status
    return out
