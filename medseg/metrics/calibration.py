"""Calibration of class probabilities: the reliability curve and the expected calibration error.

Top-label calibration as Guo et al. (2017, "On Calibration of Modern Neural Networks") define
it: each voxel's *confidence* is its largest class probability and it is *correct* when that
class is its true label. Confidences fall into ``bins`` equal-width bins, bin ``b`` (1-based)
holding ``((b - 1) / bins, b / bins]`` (bin 1 also holds 0). ECE is
``sum_b (n_b / N) |accuracy_b - confidence_b|`` over the non-empty bins. As in
scikit-learn's ``calibration_curve``, the curve is a pure function that a reliability
diagram draws from. Segmentation is dominated by certain background far from any structure,
so medseg measures calibration on *foreground-near* voxels (:func:`near_foreground`):
within ``margin_mm`` of a voxel that the prediction or the truth calls foreground.

Written here (a few lines of NumPy): scikit-learn's ``calibration_curve`` is binary only and
no peer library medseg depends on has a top-label ECE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medseg.errors import UsageError

__all__ = ["ECE_BINS", "MARGIN_MM", "Reliability", "expected_calibration_error", "near_foreground",
           "reliability", "case_reliability"]

#: Bins of the expected calibration error (the issue's and Guo et al.'s 15).
ECE_BINS = 15
#: The margin (mm) around foreground within which calibration is measured.
MARGIN_MM = 5.0


@dataclass(frozen=True)
class Reliability:
    """The reliability curve: per bin its voxel count, mean confidence and accuracy (NaN in
    empty bins), and the bin edges (``bins + 1`` values from 0 to 1)."""

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    edges: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error (module docstring); NaN without voxels."""
        n = self.counts.sum()
        if n == 0:
            return float("nan")
        full = self.counts > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.counts[full] * gap).sum() / n)

    def to_dict(self) -> dict[str, list]:
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist(),
                "confidence": [None if np.isnan(v) else float(v) for v in self.confidence],
                "accuracy": [None if np.isnan(v) else float(v) for v in self.accuracy]}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Reliability:
        """The inverse of :meth:`to_dict` (None -> NaN)."""
        def values(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in data[key]], dtype=np.float64)

        return cls(np.asarray(data["counts"], dtype=np.int64), values("confidence"),
                   values("accuracy"), np.asarray(data["edges"], dtype=np.float64))

    @classmethod
    def pooled(cls, curves: Sequence[Reliability]) -> Reliability:
        """The curve of all the voxels of ``curves`` (same bins) together: counts add,
        confidence and accuracy are the count-weighted means (exactly :func:`reliability`
        of the concatenated voxels, up to rounding)."""
        if not curves:
            raise UsageError("pooling reliability curves needs at least one")
        counts = np.sum([c.counts for c in curves], axis=0)
        def weighted(key: str) -> np.ndarray:
            total = np.sum([np.nan_to_num(getattr(c, key)) * c.counts for c in curves], axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return total / counts

        return cls(counts, weighted("confidence"), weighted("accuracy"), curves[0].edges)


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                ) -> Reliability:
    """The reliability curve of probabilities (N, K) against true labels (N,)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).ravel()
    if p.ndim != 2 or p.shape[0] != y.size:
        raise UsageError(f"reliability needs probabilities (N, K) and labels (N,), got "
                         f"{p.shape} and {y.shape}")
    if bins < 1:
        raise UsageError(f"bins must be >= 1, got {bins}")
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, confidence, bins) / counts
        acc = np.bincount(index, correct.astype(np.float64), bins) / counts
    return Reliability(counts, conf, acc, np.linspace(0.0, 1.0, bins + 1))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE of probabilities (N, K) against labels (N,) (module docstring)."""
    return reliability(probabilities, labels, bins).ece


def near_foreground(predicted: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                    margin_mm: float = MARGIN_MM) -> np.ndarray:
    """Voxels (x, y, z) within ``margin_mm`` (Euclidean, in mm) of a voxel that either label
    map calls foreground (> 0); all False when both are empty."""
    from scipy import ndimage

    foreground = (np.asarray(predicted) > 0) | (np.asarray(truth) > 0)
    if not foreground.any():
        return foreground
    distance = ndimage.distance_transform_edt(~foreground, sampling=tuple(spacing_mm))
    return distance <= margin_mm


def case_reliability(probabilities: np.ndarray, truth: np.ndarray,
                     spacing_mm: Sequence[float], margin_mm: float = MARGIN_MM,
                     bins: int = ECE_BINS) -> Reliability:
    """The reliability curve of one case's probabilities (K, x, y, z) against its true label
    map (x, y, z) over its foreground-near voxels (:func:`near_foreground` of the
    probabilities' argmax and the truth)."""
    p = np.asarray(probabilities)
    y = np.asarray(truth)
    if p.ndim != 4 or p.shape[1:] != y.shape:
        raise UsageError(f"probabilities (K, x, y, z) and labels (x, y, z) on one grid needed, "
                         f"got {p.shape} and {y.shape}")
    near = near_foreground(p.argmax(axis=0), y, spacing_mm, margin_mm)
    return reliability(p[:, near].T, y[near], bins)
