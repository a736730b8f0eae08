"""Where to look: the densest prediction error, or the centre of the biggest structure.

The *largest error* is the maximum of the error map ``pred != gt`` smoothed by
a Gaussian of ``sigma_mm`` (isotropic in millimetres, so anisotropic voxels
are handled). Large volumes are subsampled (every ``f``-th voxel, at most
about 8 million voxels) before smoothing; the result is a voxel index of the
full grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["error_centre", "structure_centre", "labels_near"]

_MAX_VOXELS = 8_000_000


def error_centre(
    gt: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], sigma_mm: float = 6.0
) -> tuple[int, int, int] | None:
    """Voxel (x, y, z) where ``pred != gt`` is densest, or None when they agree everywhere.

    >>> gt = np.zeros((20, 20, 20), np.uint8); pred = gt.copy(); pred[2:5, 14:17, 9:12] = 1
    >>> error_centre(gt, pred, (1.0, 1.0, 1.0), sigma_mm=2.0)
    (3, 15, 10)
    """
    from scipy import ndimage

    step = max(1, int(np.ceil((gt.size / _MAX_VOXELS) ** (1.0 / 3.0))))
    error = (gt[::step, ::step, ::step] != pred[::step, ::step, ::step]).astype(np.float32)
    if not error.any():
        return None
    sigma = [sigma_mm / (s * step) for s in spacing_mm]
    density = ndimage.gaussian_filter(error, sigma, mode="constant", truncate=2.5)
    index = np.unravel_index(int(np.argmax(density)), density.shape)
    full = (int(min(i * step, n - 1)) for i, n in zip(index, gt.shape, strict=True))
    return tuple(full)  # type: ignore[return-value]


def structure_centre(label: np.ndarray) -> tuple[int, int, int] | None:
    """Voxel of the biggest label (most voxels) closest to that label's centroid, or None.

    The centroid of a curved structure can lie outside it; the nearest voxel
    of the structure is returned so that every plane cuts through it.
    """
    values, counts = np.unique(label[label != 0], return_counts=True)
    if values.size == 0:
        return None
    biggest = values[int(np.argmax(counts))]
    points = np.argwhere(label == biggest)
    centroid = points.mean(axis=0)
    nearest = points[int(np.argmin(((points - centroid) ** 2).sum(axis=1)))]
    return tuple(int(i) for i in nearest)  # type: ignore[return-value]


def labels_near(
    gt: np.ndarray,
    pred: np.ndarray,
    centre: Sequence[int],
    spacing_mm: Sequence[float],
    radius_mm: float = 12.0,
) -> list[int]:
    """Labels involved in the errors within ``radius_mm`` (a box) of ``centre``, most first."""
    box = tuple(
        slice(max(0, c - int(np.ceil(radius_mm / s))), c + int(np.ceil(radius_mm / s)) + 1)
        for c, s in zip(centre, spacing_mm, strict=True)
    )
    wrong = gt[box] != pred[box]
    involved = np.concatenate([gt[box][wrong], pred[box][wrong]])
    values, counts = np.unique(involved[involved != 0], return_counts=True)
    return [int(v) for v in values[np.argsort(-counts, kind="stable")]]
