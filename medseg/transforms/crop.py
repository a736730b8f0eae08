"""Crop to the foreground (body) bounding box, and pad back ("un-crop").

The box is ``[start, stop)`` in voxels along (x, y, z): the bounding box of
``image > threshold`` (any channel) grown by ``margin`` voxels and clipped to
the volume.
"""

from __future__ import annotations

import logging

import numpy as np

from medseg.errors import GeometryError, UsageError

__all__ = ["foreground_bbox", "nonzero_bbox", "uncrop"]

log = logging.getLogger(__name__)


def foreground_bbox(
    array: np.ndarray, threshold: float, margin: int = 0
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(start, stop)`` voxels of the box holding every voxel with a value above ``threshold``.

    ``array`` is (x, y, z) or (C, x, y, z) (a voxel is foreground when any
    channel is above the threshold). When nothing is above the threshold the
    whole volume is returned (and a warning logged).
    """
    if int(margin) < 0:
        raise UsageError(f"crop margin must be >= 0 voxels, got {margin}")
    array = np.asarray(array)
    fg = array > threshold
    if fg.ndim == 4:
        fg = fg.any(axis=0)
    shape = fg.shape
    if not fg.any():
        log.warning("no voxel above %s: crop_foreground keeps the whole volume", threshold)
        return (0, 0, 0), tuple(int(s) for s in shape)  # type: ignore[return-value]
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(fg.any(axis=other))
        start.append(max(0, int(hits[0]) - int(margin)))
        stop.append(min(shape[axis], int(hits[-1]) + 1 + int(margin)))
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def nonzero_bbox(data: np.ndarray, fill: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """nnU-Net's crop to non-zero: the mask of voxels non-zero in any channel of ``data``
    (C, a0, a1, a2), its holes filled when ``fill`` (nnU-Net's ``crop_to_nonzero`` always
    fills; only a masked normalisation reads the filled mask), and its bounding box
    ``[start, stop)`` per axis in voxels (the whole axis when the mask is empty).

    Unlike :func:`foreground_bbox` there is no margin and an empty mask is not warned about
    (nnU-Net's rule). Filling never moves the box: a zero voxel outside the box reaches the
    array's border through zeros, so it is no hole.
    """
    from scipy.ndimage import binary_fill_holes

    mask = data[0] != 0
    for c in range(1, data.shape[0]):
        mask |= data[c] != 0
    bbox = []
    for axis, n in enumerate(mask.shape):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bbox.append((int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, n))
    return (binary_fill_holes(mask) if fill else mask), bbox


def uncrop(
    array: np.ndarray,
    shape: tuple[int, int, int],
    start: tuple[int, int, int],
    fill: float | np.ndarray = 0,
) -> np.ndarray:
    """Place ``array`` ((x, y, z) or (C, x, y, z)) at ``start`` in a volume of spatial ``shape``.

    ``fill`` is the background: a scalar, or one value per channel (e.g.
    ``[1, 0, 0]`` for probabilities, so the padding is certainly class 0).
    """
    array = np.asarray(array)
    stop = [s + n for s, n in zip(start, array.shape[-3:])]
    if any(b > n for b, n in zip(stop, shape)) or min(start) < 0:
        raise GeometryError(
            f"crop box {list(start)}..{stop} does not fit inside a volume of shape {list(shape)}"
        )
    out = np.empty(array.shape[:-3] + tuple(shape), dtype=array.dtype)
    fill = np.asarray(fill, dtype=array.dtype)
    out[...] = fill.reshape(fill.shape + (1, 1, 1)) if fill.ndim else fill
    out[(Ellipsis,) + tuple(slice(a, b) for a, b in zip(start, stop))] = array
    return out
