"""Failure simulation: images a model should not be trusted on, for QC tests and benchmarks.

Each corruption maps an image :class:`~medseg.volume.Volume` to a new one (the input is never
changed) and is deterministic for a given ``seed``:

* ``noise``: Gaussian noise of standard deviation ``strength`` x the image's robust range
  (99th - 1st percentile), default 1: the anatomy drowns;
* ``inversion``: intensities mirrored within their range (``min + max - x``);
* ``half_fov``: the field of view cut to its first half along x (the affine keeps every
  remaining voxel where it was: half the anatomy is missing);
* ``wrong_modality``: the intensities mapped linearly as another modality would hold them:
  a CT (values below -500) becomes MRI-like (0 to 1000, air dark), anything else CT-like
  (-1000 HU air to 1000 HU);
* ``blank``: every voxel 0.

:data:`CORRUPTIONS` names them for command lines (``benchmarks/bench_qc.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medseg.errors import check_option
from medseg.volume import Volume

__all__ = ["CORRUPTIONS", "blank", "corrupt", "half_fov", "inversion", "noise",
           "wrong_modality"]


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(array[:: max(1, array.size // (1 << 20))], [1, 99])
    return float(lo), float(hi)


def _as_float(volume: Volume, array: np.ndarray) -> Volume:
    return Volume(array.astype(np.float32), volume.affine, dict(volume.meta))


def noise(volume: Volume, seed: int = 0, strength: float = 1.0) -> Volume:
    """Gaussian noise, sd = ``strength`` x (p99 - p1) of the image."""
    array = np.asarray(volume.array, dtype=np.float32)
    lo, hi = _robust_range(array)
    rng = np.random.default_rng(seed)
    return _as_float(volume, array + rng.standard_normal(array.shape, dtype=np.float32)
                     * np.float32(strength * max(hi - lo, 1.0)))


def inversion(volume: Volume, seed: int = 0) -> Volume:
    """``min + max - x``: bright becomes dark within the same range."""
    array = np.asarray(volume.array, dtype=np.float32)
    return _as_float(volume, array.min() + array.max() - array)


def half_fov(volume: Volume, seed: int = 0) -> Volume:
    """The first half of the field of view along x (the affine of the kept voxels)."""
    shape = volume.spatial_shape
    start = [0, 0, 0]
    stop = [max(1, shape[0] // 2), shape[1], shape[2]]
    return volume.crop(start, stop)


def wrong_modality(volume: Volume, seed: int = 0) -> Volume:
    """A CT as an MRI would hold it, anything else as a CT (module docstring)."""
    array = np.asarray(volume.array, dtype=np.float32)
    lo, hi = _robust_range(array)
    unit = (array - lo) / max(hi - lo, 1e-6)
    if lo < -500:  # CT: air near -1000 HU
        return _as_float(volume, np.clip(unit, 0, None) * 1000.0)
    return _as_float(volume, unit * 2000.0 - 1000.0)


def blank(volume: Volume, seed: int = 0) -> Volume:
    """Every voxel 0 (an empty or failed export)."""
    return _as_float(volume, np.zeros(volume.shape, dtype=np.float32))


#: Corruption name -> function ``(volume, seed) -> Volume``.
CORRUPTIONS: dict[str, Callable[..., Volume]] = {
    "noise": noise, "inversion": inversion, "half_fov": half_fov,
    "wrong_modality": wrong_modality, "blank": blank,
}


def corrupt(volume: Volume, name: str, seed: int = 0) -> Volume:
    """``volume`` under the corruption ``name`` (one of :data:`CORRUPTIONS`)."""
    check_option(name, list(CORRUPTIONS), "corruption")
    return CORRUPTIONS[name](volume, seed)
