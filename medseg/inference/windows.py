"""Window placement and blending weights for sliding-window inference.

Placement (MONAI's ``dense_patch_slices``, so that results agree with MONAI's
``sliding_window_inference`` voxel for voxel): along an axis of ``size``
voxels, windows of ``roi`` voxels start every ``step = int(roi * (1 - overlap))``
voxels (at least 1), as many as it takes to reach the end, and the last one is
moved back to be flush with the edge. Neighbours therefore overlap by at least
``overlap * roi``. When ``size <= roi`` there is one window (the caller pads).
nnU-Net instead spreads the same number of windows evenly. medseg used to; both
are sound, but on a trained network the different placement changed ~0.14 % of
the argmax labels against MONAI (uncertain voxels at organ borders), while the
same placement makes the two agree to float rounding.

Weights: the Gaussian importance map is the product of three 1D Gaussians
``exp(-d^2 / (2 sigma^2))`` with ``sigma = roi / 8`` per axis, ``d`` the distance
in voxels from the window centre, and floored at :data:`WEIGHT_FLOOR` (1e-3)
so that no weight is zero: exactly MONAI's ``compute_importance_map``, which
does not rescale the peak to 1 (for an even roi the centre lies between voxels
and the largest weight is a little under 1). The blended output at a voxel is
``sum_w weight_w * pred_w / sum_w weight_w`` over the windows covering it.

nnU-Net's window (``blend="nnunet"``, for imported nnU-Net models, so that medseg's
output equals ``nnUNetPredictor``'s): windows spread evenly (:func:`even_window_starts`)
and nnU-Net's Gaussian (:func:`nnunet_importance_map`: a unit impulse at voxel
``roi // 2`` smoothed by ``scipy.ndimage.gaussian_filter`` with sigma = roi / 8, scaled to a
peak of 10, float16, zeros raised to the smallest non-zero weight). These take the
window frame of :mod:`medseg.transforms.nnunet`: nnU-Net's array axes reversed.

The arithmetic of one run (placement, weights, flips and how outputs are added) is one
object chosen once from the window's ``blend`` (:func:`arithmetic_for`):
:class:`BlendArithmetic` (MONAI's placement, float32 sums) or :class:`NnunetArithmetic`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medseg.inference.placement import (
    SIGMA_SCALE,
    WEIGHT_FLOOR,
    even_window_starts,
    flip_sets,
    gaussian_weights,
    nnunet_gaussian,
    window_starts,
)

__all__ = [
    "BlendArithmetic",
    "NnunetArithmetic",
    "arithmetic_for",
    "SIGMA_SCALE",
    "WEIGHT_FLOOR",
    "window_starts",
    "importance_map",
    "constant_map",
    "even_window_starts",
    "nnunet_importance_map",
    "WindowGrid",
]

#: Window placements: MONAI's (fixed step, last window flush with the edge) or nnU-Net's
#: (the same number of windows spread evenly).
PLACEMENTS = ("flush", "even")



@functools.lru_cache(maxsize=8)
def nnunet_importance_map(roi_size: tuple[int, int, int],
                          device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """nnU-Net's Gaussian weights (x, y, z) of one window in the window frame (nnU-Net's
    axes reversed), float16 (module docstring). A window one voxel deep along z is a 2d
    network's: the map is nnU-Net's 2d map of the (y, x) tile. Cached: do not modify it.

    Written here (not imported from nnunetv2, a test-only oracle); equal to nnunetv2's
    ``compute_gaussian(patch, 1/8, 10)`` bit for bit (tests/inference/test_nnunet_window.py).
    """
    return torch.from_numpy(nnunet_gaussian(roi_size)).to(device)


@functools.lru_cache(maxsize=16)
def importance_map(
    roi_size: tuple[int, int, int],
    sigma_scale: float = SIGMA_SCALE,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian importance map (x, y, z) of one window.

    Values in ``[WEIGHT_FLOOR, 1]``, largest at the centre. Built once and cached on
    ``(roi_size, sigma_scale, device, dtype)``: do not modify it in place.
    """
    return torch.from_numpy(gaussian_weights(roi_size, sigma_scale)).to(device=device,
                                                                    dtype=dtype)


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
    def build(cls, shape: Sequence[int], roi: Sequence[int], overlap: float,
              placement: str = "flush") -> WindowGrid:
        """Windows over ``shape``: ``placement`` ``"flush"`` (:func:`window_starts`) or
        ``"even"`` (:func:`even_window_starts`)."""
        shape = tuple(int(s) for s in shape)
        roi = tuple(int(r) for r in roi)
        starts_of = even_window_starts if placement == "even" else window_starts
        starts = tuple(starts_of(n, r, overlap) for n, r in zip(shape, roi))
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


Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class BlendArithmetic:
    """medseg's window arithmetic (MONAI's): windows flush with the edge
    (:func:`window_starts`), Gaussian or constant float32 weights, the flips' outputs summed
    and scaled by ``1 / flips`` when added, sums and weights accumulated in the output
    dtype and float32.

    Attributes
    ----------
    blend : ``"gaussian"`` or ``"constant"``.
    flips : the axis sets mirrored (window frame), the empty set first.
    """

    blend: str
    flips: tuple[tuple[int, ...], ...]
    placement = "flush"

    def dtypes(self, out_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
        """(accumulator, weight sum) dtypes for a requested output dtype."""
        return out_dtype, torch.float32

    def weight(self, roi: tuple[int, int, int], device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        """The importance map (x, y, z) in the accumulator's ``dtype``."""
        if self.blend == "gaussian":
            return importance_map(roi, SIGMA_SCALE, device, torch.float32).to(dtype)
        return constant_map(roi, device, torch.float32).to(dtype)

    def combine_flips(self, total: torch.Tensor, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
        """The flips' summed outputs, as added (scaled in :meth:`add`)."""
        return total.to(device, dtype)

    def add(self, acc: torch.Tensor, den: torch.Tensor, region: Region,
            pred: torch.Tensor | None, weight: torch.Tensor) -> None:
        """acc[:, region] += weight * pred / flips, den[region] += weight; ``pred`` None is a
        skipped window: one-hot background (1 in channel 0)."""
        if pred is None:
            acc[(0,) + region].add_(weight)
        else:
            acc[(slice(None),) + region].addcmul_(pred, weight, value=1.0 / len(self.flips))
        den[region].add_(weight)


@dataclass(frozen=True)
class NnunetArithmetic:
    """nnU-Net v2's window arithmetic, operation for operation: windows spread evenly
    (:func:`even_window_starts`), its float16 Gaussian (:func:`nnunet_importance_map`), the
    flips in nnU-Net's order (its axes ascending are the window frame's descending) averaged
    in float32, ``weight * pred`` in float32 added into a float16 accumulator, the weights
    summed in float16: the output is float16, as nnUNetPredictor's logits.
    """

    flips: tuple[tuple[int, ...], ...]
    placement = "even"

    def dtypes(self, out_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
        return torch.float16, torch.float16

    def weight(self, roi: tuple[int, int, int], device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        return nnunet_importance_map(roi, device)

    def combine_flips(self, total: torch.Tensor, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
        """The mean over flips, kept in float32."""
        return total.div_(len(self.flips)).to(device)

    def add(self, acc: torch.Tensor, den: torch.Tensor, region: Region,
            pred: torch.Tensor | None, weight: torch.Tensor) -> None:
        if pred is None:
            acc[(0,) + region].add_(weight)
        else:
            acc[(slice(None),) + region] += pred.mul_(weight)
        den[region].add_(weight)


Arithmetic = BlendArithmetic | NnunetArithmetic


def arithmetic_for(blend: str, mirror_axes: Sequence[int]) -> Arithmetic:
    """The window arithmetic of a ``blend`` (``"gaussian"``, ``"constant"`` or
    ``"nnunet"``) mirroring ``mirror_axes`` (window frame)."""
    if blend == "nnunet":
        return NnunetArithmetic(tuple(flip_sets(sorted(mirror_axes, reverse=True))))
    return BlendArithmetic(blend, tuple(flip_sets(tuple(mirror_axes))))
