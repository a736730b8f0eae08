"""Where sliding windows go and how much each voxel of one weighs, in NumPy.

The torch sliding window (:mod:`medseg.inference.windows`, :mod:`~medseg.inference.sliding_window`)
and the torch-free runner of ``medseg export`` (which copies this module) share these, so
both lay the same windows and blend with the same weights. See
:mod:`medseg.inference.windows` for the conventions (MONAI's flush placement and Gaussian;
nnU-Net's even placement and Gaussian). Window sizes are voxels (x, y, z).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SIGMA_SCALE", "WEIGHT_FLOOR", "even_window_starts", "flip_sets", "gaussian_weights",
           "nnunet_gaussian", "window_starts"]

SIGMA_SCALE = 0.125  # sigma = roi / 8
WEIGHT_FLOOR = 1e-3  # absolute, as MONAI's


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices (voxels) of windows of length ``roi`` covering ``[0, size)``.

    >>> window_starts(64, 32, 0.5)
    [0, 16, 32]
    >>> window_starts(100, 32, 0.5)
    [0, 16, 32, 48, 64, 68]
    """
    if size <= roi:
        return [0]
    step = max(int(roi * (1.0 - overlap)), 1)
    n = -(-(size - roi) // step) + 1  # ceil: the first n with (n - 1) * step + roi >= size
    return [min(i * step, size - roi) for i in range(n)]


def even_window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """nnU-Net's window starts: ``n = ceil((size - roi) / (roi * (1 - overlap))) + 1`` windows,
    start ``i`` at ``round(i * (size - roi) / (n - 1))`` (round half to even, as numpy).
    A window one voxel deep (a 2d network's slice) starts at every voxel.

    >>> even_window_starts(110, 64, 0.5)
    [0, 23, 46]
    >>> even_window_starts(3, 1, 0.5)
    [0, 1, 2]
    """
    if roi == 1:
        return list(range(size))
    if size <= roi:
        return [0]
    n = math.ceil((size - roi) / (roi * (1.0 - overlap))) + 1
    step = (size - roi) / (n - 1)
    return [int(round(step * i)) for i in range(n)]


def gaussian_weights(roi_size: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """MONAI's Gaussian importance map (x, y, z), float64: the product of three 1D Gaussians
    with sigma = ``sigma_scale * roi`` voxels about the window centre, floored at
    :data:`WEIGHT_FLOOR` (the peak is not rescaled)."""
    profiles = []
    for r in roi_size:
        x = np.arange(int(r), dtype=np.float64) - (int(r) - 1) / 2.0
        profiles.append(np.exp(-0.5 * (x / (sigma_scale * int(r))) ** 2))
    px, py, pz = profiles
    full = px[:, None, None] * py[None, :, None] * pz[None, None, :]
    return np.maximum(full, max(float(full.min()), WEIGHT_FLOOR))


def nnunet_gaussian(roi_size: Sequence[int]) -> np.ndarray:
    """nnU-Net's Gaussian weights (x, y, z) in the window frame (nnU-Net's axes reversed),
    float16: a unit impulse at voxel ``roi // 2`` (nnU-Net's frame) smoothed by
    ``scipy.ndimage.gaussian_filter`` with sigma = roi / 8, scaled to a peak of 10, zeros
    raised to the smallest non-zero weight. A window one voxel deep along z is a 2d
    network's: nnU-Net's 2d map of the (y, x) tile."""
    from scipy.ndimage import gaussian_filter

    roi = tuple(int(r) for r in roi_size)
    tile = tuple(reversed(roi))  # nnU-Net's axis order
    if roi[2] == 1:
        tile = tile[1:]
    impulse = np.zeros(tile)
    impulse[tuple(t // 2 for t in tile)] = 1.0
    smooth = gaussian_filter(impulse, [t / 8 for t in tile], 0, mode="constant", cval=0)
    smooth /= smooth.max() / 10.0
    weights = smooth.astype(np.float16)
    zero = weights == 0
    weights[zero] = weights[~zero].min()
    return np.ascontiguousarray(weights.transpose(*reversed(range(weights.ndim))).reshape(roi))


def flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (the empty one first), in the given axis order."""
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
