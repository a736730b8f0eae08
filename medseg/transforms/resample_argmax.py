"""Label maps from linearly resampled class probabilities, without the (K, x, y, z) array.

``resample_argmax(probabilities, shape, affine)`` is ``argmax`` over channels of
``resample_to_grid(probabilities, shape, affine)`` (linear: they are
:class:`~medseg.volume.Probabilities`): how nnU-Net brings a
segmentation back from a coarser network grid (interpolating the probabilities, not
the labels; nearest-neighbour labels are blocky). Our own implementation: the
obvious one interpolates all K channels at every output voxel, which took 7.4 s for
6 classes on a 512 x 512 x 300 CT on 2 cores, longer than the network.

Linear interpolation is a convex combination of the (up to) 8 source voxels around
an output voxel, and a convex combination of probability vectors whose argmax is
the same class k has argmax k too. So only output voxels whose source cell has
corners of different classes (near boundaries) are interpolated; every other voxel
takes its cell's class directly. Those that are interpolated use the separable
passes' arithmetic in the same axis order (``a + (b - a) * w`` in float32), so the
labels equal the full computation's bit for bit, except where two classes tie to
within float32 rounding; there the shortcut gives the exact-arithmetic answer.

Work is done ``slab`` output z-slices at a time and in chunks of boundary voxels,
so memory stays at a few (x, y, slab) arrays plus K x ``CHUNK`` values. A slab that
is mostly boundary (a noisy or untrained network) is interpolated whole with the
separable passes instead (K x x x y x ``slab`` values), which is then faster.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medseg.argmax import argmax_channels, label_dtype
from medseg.errors import UsageError
from medseg.transforms.resample import (
    _axis_order,
    _index_map,
    _is_identity,
    _linear_taps,
    _positions,
    _resample_at,
    _triple,
    as_tensor,
)
from medseg.volume import LabelMap, Probabilities

__all__ = ["resample_argmax"]

CHUNK = 1 << 18  # boundary voxels interpolated at once (K x CHUNK x 8 values)
#: Above this share of mixed-cell voxels in a slab, interpolating every voxel with the
#: separable passes is faster than gathering the corners of each mixed one (measured:
#: per voxel the gathers cost about 4x a separable pass, on 2 cores).
MIXED_SHARE = 0.2


@dataclass
class _Axis:
    """Per output index along one axis: lower/upper source index and weight (float32).

    ``identity``: output index i samples source index i exactly (the separable
    resampling skips such an axis); then ``lo == hi`` and the axis is not interpolated.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    w: torch.Tensor
    identity: bool

    @classmethod
    def build(cls, pos: torch.Tensor, n_src: int) -> _Axis:
        if _is_identity(pos, n_src):
            index = torch.arange(n_src, device=pos.device)
            return cls(index, index, torch.zeros(n_src, device=pos.device), True)
        lo, hi, frac = _linear_taps(pos, n_src)  # the separable linear pass's taps
        return cls(lo, hi, frac.to(torch.float32), False)

    @property
    def span(self) -> int:
        """Source voxels a cell covers along this axis."""
        return 1 if self.identity or bool((self.hi == self.lo).all()) else 2


def resample_argmax(
    probabilities: Probabilities,
    shape: Sequence[int],
    affine: np.ndarray,
    device: str | torch.device | None = None,
    slab: int = 16,
) -> LabelMap:
    """Labels = argmax over channels of ``probabilities`` linearly resampled onto a grid.

    Parameters
    ----------
    probabilities : (K, x', y', z') class probabilities.
    shape : (x, y, z) voxels of the target grid.
    affine : (4, 4) target voxel -> RAS+ mm, with the source's axis directions.
    device : where the work runs (e.g. ``"cuda"``); the result comes back as NumPy.
    slab : output z-slices done at a time (module docstring).

    Returns
    -------
    LabelMap (x, y, z) on exactly ``(shape, affine)``, of :func:`medseg.argmax.label_dtype`
    (uint8 up to 256 classes, uint16 above), like every label map medseg returns; computed
    in int32 above 256 classes (torch has no uint16 indexed writes on the CPU).

    Raises
    ------
    UsageError : ``probabilities`` is not a :class:`~medseg.volume.Probabilities`.
    """
    if not isinstance(probabilities, Probabilities):
        raise UsageError(
            f"resample_argmax needs Probabilities (K, x, y, z), got {type(probabilities).__name__}"
        )
    shape = _triple(shape, "shape", int)
    affine = np.asarray(affine, dtype=np.float64)
    scale, offset = _index_map(probabilities.affine, affine)
    probs = as_tensor(probabilities.array)
    probs = probs.to(device) if device is not None else probs
    if not probs.is_floating_point():
        probs = probs.to(torch.float32)
    k, sizes = probs.shape[0], tuple(probs.shape[1:])
    positions = [_positions(shape[a], scale[a], offset[a], sizes[a], probs.device)
                 for a in range(3)]
    axes = [_Axis.build(positions[a], sizes[a]) for a in range(3)]
    order = _axis_order(shape, sizes)
    dtype = torch.uint8 if label_dtype(k) == np.uint8 else torch.int32  # work dtype
    coarse = argmax_channels(probs, torch.empty(sizes, dtype=dtype, device=probs.device))
    uniform = _uniform_cells(coarse, [ax.span for ax in axes])
    labels = torch.empty(shape, dtype=dtype, device=probs.device)
    for z0 in range(0, shape[2], max(int(slab), 1)):
        z = torch.arange(z0, min(z0 + slab, shape[2]), device=probs.device)
        cells = (axes[0].lo, axes[1].lo, axes[2].lo[z])
        out = labels[..., z0:z0 + len(z)]
        mixed = ~_gather3(uniform, cells)
        if int(mixed.sum()) > MIXED_SHARE * out.numel():  # mostly boundary: all, separably
            _separable_slab(probs, positions, order, z0, out)
            continue
        todo = mixed.nonzero()
        out.copy_(_gather3(coarse, cells))
        for start in range(0, len(todo), CHUNK):
            idx = todo[start:start + CHUNK]
            voxel = (idx[:, 0], idx[:, 1], z[idx[:, 2]])
            values = _interpolate(probs, axes, order, voxel)
            out[idx[:, 0], idx[:, 1], idx[:, 2]] = values.argmax(dim=0).to(dtype)
    array = labels.cpu().numpy().astype(label_dtype(k), copy=False)
    return LabelMap(array, affine, probabilities.meta)


def _separable_slab(probs: torch.Tensor, positions: list[torch.Tensor], order: list[int],
                    z0: int, out: torch.Tensor) -> None:
    """Labels of output slices [z0, z0 + out.shape[2]) by the separable passes over all K
    channels and voxels: only the source slices they read, at the same positions."""
    z_pos = positions[2][z0:z0 + out.shape[2]]
    n = probs.shape[3]
    lo = max(0, min(int(z_pos[0].floor()), n - 2))  # >= 2 slices, clamped as globally
    hi = min(int(z_pos[-1].floor()) + 2, n)
    part = _resample_at(probs[..., lo:hi], positions[:2] + [z_pos - lo], order, "linear")
    argmax_channels(part, out)


def _gather3(t: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``t[ix][:, iy][:, :, iz]`` for (x, y, z) ``t``: the grid of the three index lists."""
    return t.index_select(0, index[0]).index_select(1, index[1]).index_select(2, index[2])


def _uniform_cells(labels: torch.Tensor, spans: list[int]) -> torch.Tensor:
    """Bool (x, y, z) over cells: True where every source voxel of the cell starting there
    (``spans`` voxels per axis) has the same label; cells that would leave the grid are
    padded as True (the sampling never starts one there)."""
    cells = [n - s + 1 for n, s in zip(labels.shape, spans)]
    ref = labels[: cells[0], : cells[1], : cells[2]]
    same = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    view = same[: cells[0], : cells[1], : cells[2]]
    for d in itertools.product(*(range(s) for s in spans)):
        if any(d):
            view &= labels[d[0]:d[0] + cells[0], d[1]:d[1] + cells[1], d[2]:d[2] + cells[2]] == ref
    return same


def _interpolate(probs: torch.Tensor, axes: list[_Axis], order: list[int],
                 voxel: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(K, n) interpolated values at n output voxels (x, y, z indices), lerping the corners
    along the axes in ``order`` exactly as the separable passes do."""
    lo = [ax.lo[v] for ax, v in zip(axes, voxel)]
    hi = [ax.hi[v] for ax, v in zip(axes, voxel)]
    corners = {}
    for c in itertools.product(*((0,) if ax.identity else (0, 1) for ax in axes)):
        index = tuple(hi[a] if c[a] else lo[a] for a in range(3))
        corners[c] = probs[:, index[0], index[1], index[2]]
    for axis in order:
        if axes[axis].identity:
            continue
        w = axes[axis].w[voxel[axis]]
        merged = {}
        for c, a in corners.items():
            if c[axis] == 0:
                b = corners[c[:axis] + (1,) + c[axis + 1:]]
                merged[c] = a.add(b.sub(a).mul_(w))
        corners = merged
    (values,) = corners.values()
    return values
