"""Intensity normalisation: CT windowing (scaled or z-scored), MR z-score, percentile clipping.

All functions take an ``(x, y, z)`` or ``(C, x, y, z)`` array, work per channel,
and return float32. None of them changes geometry, and none needs inverting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import UsageError

__all__ = ["OUTPUT_RANGES", "apply_intensity", "ct_window", "ct_window_zscore", "zscore",
           "clip_percentiles"]

OUTPUT_RANGES = ((0.0, 1.0), (-1.0, 1.0))


def apply_intensity(array: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """``array`` (C, x, y, z) normalised as a preprocessing config's ``intensity`` block says
    (``mode`` ct / mr / none, ``window``, ``output_range``, ``mean_std``, ``mask_threshold``,
    ``clip_percentiles``; see :mod:`medseg.transforms.pipeline`), as float32.

    MR statistics are taken inside ``image > mask_threshold`` (any channel; default 0);
    percentiles inside that mask for MR, over all voxels otherwise.
    """
    mask = None
    if spec["mode"] == "mr":
        mask = (array > float(spec.get("mask_threshold", 0.0))).any(axis=0)
    if "clip_percentiles" in spec:
        array = clip_percentiles(array, spec["clip_percentiles"], mask)
    if spec["mode"] == "ct" and "mean_std" in spec:
        array = ct_window_zscore(array, spec["window"], spec["mean_std"])
    elif spec["mode"] == "ct":
        array = ct_window(array, spec["window"], spec.get("output_range", (0.0, 1.0)))
    elif spec["mode"] == "mr":
        array = zscore(array, mask)
    return np.asarray(array, dtype=np.float32)


def ct_window(
    array: np.ndarray,
    window: Sequence[float],
    output_range: Sequence[float] = (0.0, 1.0),
) -> np.ndarray:
    """Clip Hounsfield units to ``window = [lo, hi]`` and scale linearly to ``output_range``.

    ``lo`` maps to ``output_range[0]`` and ``hi`` to ``output_range[1]``;
    ``output_range`` is ``(0, 1)`` (default) or ``(-1, 1)``.

    >>> ct_window(np.array([-1000, -200, 50, 300, 2000]), [-200, 300]).tolist()
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    lo, hi = _pair(window, "window")
    if not hi > lo:
        raise UsageError(f"CT window must be [lo, hi] HU with lo < hi, got {list(window)}")
    out_lo, out_hi = _pair(output_range, "output_range")
    if (out_lo, out_hi) not in OUTPUT_RANGES:
        raise UsageError(f"output_range must be [0, 1] or [-1, 1], got {list(output_range)}")
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(lo)
    out *= np.float32((out_hi - out_lo) / (hi - lo))
    if out_lo:
        out += np.float32(out_lo)
    return out


def ct_window_zscore(
    array: np.ndarray, window: Sequence[float], mean_std: Sequence[float]
) -> np.ndarray:
    """Clip Hounsfield units to ``window = [lo, hi]``, then ``(x - mean) / std``.

    nnU-Net's CT normalisation: ``window`` is the dataset's foreground 0.5 / 99.5
    percentiles and ``mean_std = [mean, std]`` (HU) its foreground mean and standard
    deviation, fixed for every case (unlike :func:`zscore`, which measures each case).

    >>> ct_window_zscore(np.array([-1000, 0, 100, 2000]), [-100, 300], [100, 50]).tolist()
    [-4.0, -2.0, 0.0, 4.0]
    """
    lo, hi = _pair(window, "window")
    if not hi > lo:
        raise UsageError(f"CT window must be [lo, hi] HU with lo < hi, got {list(window)}")
    mean, std = _pair(mean_std, "mean_std")
    if not std > 0:
        raise UsageError(f"mean_std must be [mean, std] HU with std > 0, got {list(mean_std)}")
    out = np.clip(np.asarray(array, dtype=np.float32), lo, hi)
    out -= np.float32(mean)
    out /= np.float32(std)
    return out


def zscore(array: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-8) -> np.ndarray:
    """``(array - mean) / std`` per channel, with mean and std taken inside ``mask``.

    ``mask`` is an ``(x, y, z)`` boolean foreground; ``None`` uses every voxel,
    and an empty mask falls back to every voxel. All voxels (inside and
    outside the mask) are shifted and scaled. ``std`` is floored at ``eps``.
    """
    out = np.array(array, dtype=np.float32, copy=True)
    for channel in _channels(out):
        values = _masked(channel, mask)
        mean = float(values.mean(dtype=np.float64))
        std = max(float(values.std(dtype=np.float64)), eps)
        channel -= np.float32(mean)
        channel /= np.float32(std)
    return out


def clip_percentiles(
    array: np.ndarray, percentiles: Sequence[float], mask: np.ndarray | None = None
) -> np.ndarray:
    """Clip each channel to its ``[p_lo, p_hi]`` percentiles (0-100), computed inside ``mask``."""
    p_lo, p_hi = _pair(percentiles, "clip_percentiles")
    if not 0 <= p_lo < p_hi <= 100:
        raise UsageError(
            f"clip_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, got {list(percentiles)}"
        )
    out = np.array(array, dtype=np.float32, copy=True)
    for channel in _channels(out):
        lo, hi = np.percentile(_masked(channel, mask), [p_lo, p_hi])
        np.clip(channel, lo, hi, out=channel)
    return out


def _channels(array: np.ndarray) -> list[np.ndarray]:
    return [array] if array.ndim == 3 else list(array)


def _masked(channel: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return channel.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != channel.shape:
        raise UsageError(
            f"mask of shape {mask.shape} does not fit an image of shape {channel.shape}"
        )
    values = channel[mask]
    return values if values.size else channel.ravel()


def _pair(values, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be two numbers [lo, hi], got {values!r}") from None
    return lo, hi
