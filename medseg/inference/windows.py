"""Window placement and blending weights for sliding-window inference.

Placement: along an axis of ``size`` voxels with windows of ``roi`` voxels,
``n = ceil((size - roi) / (roi * (1 - overlap))) + 1`` windows are spread
evenly from 0 to ``size - roi`` (rounded to whole voxels), so neighbours
overlap by at least ``overlap * roi`` and the last window is flush with the
edge. When ``size <= roi`` there is one window (the caller pads).

Weights: the Gaussian importance map is the product of three 1D Gaussians
with ``sigma = roi / 8`` per axis centred on the window centre, scaled to a
maximum of 1, and floored at :data:`WEIGHT_FLOOR` (1e-3, as MONAI does, so that
results are comparable and no weight is zero). The blended output at a voxel is
``sum_w weight_w * pred_w / sum_w weight_w`` over the windows covering it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SIGMA_SCALE",
    "WEIGHT_FLOOR",
    "window_starts",
    "importance_map",
    "constant_map",
    "WindowGrid",
]

SIGMA_SCALE = 0.125  # sigma = roi / 8
WEIGHT_FLOOR = 1e-3  # relative to the centre weight (1)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices (voxels) of windows of length ``roi`` covering ``[0, size)``.

    >>> window_starts(64, 32, 0.5)
    [0, 16, 32]
    >>> window_starts(100, 32, 0.5)
    [0, 14, 27, 41, 54, 68]
    """
    if size <= roi:
        return [0]
    n = math.ceil((size - roi) / (roi * (1.0 - overlap)) - 1e-9) + 1
    step = (size - roi) / (n - 1)
    return [int(math.floor(i * step + 0.5)) for i in range(n)]


@functools.lru_cache(maxsize=16)
def importance_map(
    roi_size: tuple[int, int, int],
    sigma_scale: float = SIGMA_SCALE,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian importance map (x, y, z) of one window.

    Values in ``[WEIGHT_FLOOR, 1]``, 1 at the centre. Built once and cached on
    ``(roi_size, sigma_scale, device, dtype)``: do not modify it in place.
    """
    profiles = []
    for r in roi_size:
        x = torch.arange(int(r), dtype=torch.float64) - (int(r) - 1) / 2.0
        profiles.append(torch.exp(-0.5 * (x / (sigma_scale * int(r))) ** 2))
    px, py, pz = profiles
    full = px[:, None, None] * py[None, :, None] * pz[None, None, :]
    full = (full / full.max()).clamp_(min=WEIGHT_FLOOR)
    return full.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def constant_map(
    roi_size: tuple[int, int, int], device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform weights (x, y, z) of one window (cached: do not modify in place)."""
    return torch.ones(tuple(int(r) for r in roi_size), device=device, dtype=dtype)


@dataclass
class WindowGrid:
    """Window starts over a (padded) volume of ``shape`` (x, y, z) voxels.

    ``starts[a]`` are the starts along axis a; :attr:`windows` lists every
    (x0, y0, z0), ordered by z, then y, then x.
    """

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    starts: tuple[list[int], list[int], list[int]]

    @classmethod
    def build(cls, shape: Sequence[int], roi: Sequence[int], overlap: float) -> WindowGrid:
        shape = tuple(int(s) for s in shape)
        roi = tuple(int(r) for r in roi)
        starts = tuple(window_starts(n, r, overlap) for n, r in zip(shape, roi))
        return cls(shape, roi, starts)  # type: ignore[arg-type]

    @property
    def windows(self) -> list[tuple[int, int, int]]:
        xs, ys, zs = self.starts
        return [(x, y, z) for z in zs for y in ys for x in xs]

    def region(self, window: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        slices = tuple(slice(s, s + r) for s, r in zip(window, self.roi))
        return slices  # type: ignore[return-value]

    @property
    def z_span(self) -> int:
        """Slices the slab accumulator must hold: one window depth plus the largest z step."""
        zs = self.starts[2]
        step = max((b - a for a, b in zip(zs, zs[1:])), default=0)
        return min(self.shape[2], self.roi[2] + step)
