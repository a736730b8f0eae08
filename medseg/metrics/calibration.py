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

__all__ = ["ECE_BINS", "Reliability", "expected_calibration_error", "near_foreground",
           "reliability"]

#: Bins of the expected calibration error (the issue's and Guo et al.'s 15).
ECE_BINS = 15


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
                    margin_mm: float) -> np.ndarray:
    """Voxels (x, y, z) within ``margin_mm`` (Euclidean, in mm) of a voxel that either label
    map calls foreground (> 0); all False when both are empty."""
    from scipy import ndimage

    foreground = (np.asarray(predicted) > 0) | (np.asarray(truth) > 0)
    if not foreground.any():
        return foreground
    distance = ndimage.distance_transform_edt(~foreground, sampling=tuple(spacing_mm))
    return distance <= margin_mm
