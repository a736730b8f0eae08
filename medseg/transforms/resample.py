"""Resampling to a target spacing and back onto an exact grid, in torch.

Resampling here never rotates: the target grid has the same axis directions as
the source (after reorientation they are the array axes), so the map from
target voxel index to source voxel index is, per axis, ``src = scale * i +
offset``. Interpolation is therefore separable: one 1D pass per axis
(``index_select`` plus a weighted sum), which needs no ``(x, y, z, 3)``
sampling grid and runs on whatever device the tensor is on.

Conventions
-----------
* Voxel centres are the sample points (``align_corners=True`` semantics in
  torch terms): target index ``i`` is sampled exactly at the source index the
  two affines say, so world positions of voxel centres are preserved.
* :func:`grid_for_spacing` keeps the field of view centred: the new grid has
  ``round(n * old_spacing / new_spacing)`` voxels per axis and its centre is
  the old grid's centre (in world mm).
* Samples outside the source grid take the nearest edge value (replicate).
* ``"linear"`` is trilinear, ``"cubic"`` is Keys cubic convolution
  (a = -0.5, Catmull-Rom; interpolating, may overshoot), ``"nearest"`` rounds
  half up and keeps the dtype (labels).
* Without a ``mode`` the volume's type decides (:class:`~medseg.volume.LabelMap`
  nearest, :class:`~medseg.volume.Probabilities` and plain Volumes linear), and the
  result keeps the type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medseg.errors import UsageError, check_option
from medseg.transforms.grid import grid_for_spacing, index_map as _index_map, triple as _triple
from medseg.volume import LabelMap, Volume

__all__ = ["MODES", "as_tensor", "grid_for_spacing", "resample", "resample_to_grid",
           "resample_tensor"]

MODES = ("linear", "cubic", "nearest")


def resample(
    volume: Volume,
    spacing_mm: Sequence[float],
    mode: str | None = None,
    device: str | torch.device | None = None,
) -> Volume:
    """``volume`` resampled to voxel size ``spacing_mm`` (see :func:`grid_for_spacing`).

    ``mode`` is ``"linear"``/``"cubic"`` for images (float32 output) or
    ``"nearest"`` for label maps (dtype kept); None: the volume's type decides
    (:func:`resample_to_grid`). ``device`` is where the work is done (e.g.
    ``"cuda"``); the result is returned as a NumPy-backed Volume of the input's type.
    """
    shape, affine = grid_for_spacing(volume.spatial_shape, volume.affine, spacing_mm)
    return resample_to_grid(volume, shape, affine, mode=mode, device=device)


def resample_to_grid(
    volume: Volume,
    shape: Sequence[int],
    affine: np.ndarray,
    mode: str | None = None,
    device: str | torch.device | None = None,
) -> Volume:
    """``volume`` sampled on the grid ``(shape, affine)``; the result has exactly that grid
    and the input's type.

    ``mode`` None lets the type decide: a :class:`~medseg.volume.LabelMap` is resampled
    by nearest neighbour, :class:`~medseg.volume.Probabilities` and plain Volumes linearly.
    The target grid must have the source's axis directions (any spacing and
    origin): rotations are not resampled here.

    Raises
    ------
    GeometryError : the target grid is rotated or permuted relative to the source.
    UsageError : an unknown ``mode``, or one other than ``"nearest"`` for a LabelMap.
    """
    mode = _mode_for(volume, mode)
    affine = np.asarray(affine, dtype=np.float64)
    shape = _triple(shape, "shape", int)
    scale, offset = _index_map(volume.affine, affine)
    tensor = as_tensor(volume.array)
    if device is not None:
        tensor = tensor.to(device)
    out = resample_tensor(tensor, scale, offset, shape, mode)
    return type(volume)(out.cpu().numpy(), affine, volume.meta)


def _mode_for(volume: Volume, mode: str | None) -> str:
    """``mode``, or the volume type's own interpolation when None (plain Volume: linear)."""
    if mode is None:
        return getattr(volume, "interpolation", "linear")
    mode = check_option(mode, MODES, "interpolation mode")
    if isinstance(volume, LabelMap) and mode != "nearest":
        raise UsageError(
            f"a LabelMap is resampled by nearest neighbour, got mode {mode!r}; to interpolate "
            "its values, resample Volume(labels.array, labels.affine)"
        )
    return mode


def resample_tensor(
    tensor: torch.Tensor,
    scale: Sequence[float],
    offset: Sequence[float],
    shape: Sequence[int],
    mode: str = "linear",
) -> torch.Tensor:
    """Separable resampling of the last three axes of ``tensor`` ((x, y, z) or (C, x, y, z)).

    Output voxel ``i`` along axis ``a`` samples source index
    ``scale[a] * i + offset[a]``. ``"linear"``/``"cubic"`` return float32 (or the
    input's floating dtype); ``"nearest"`` keeps the dtype.
    """
    mode = check_option(mode, MODES, "interpolation mode")
    sizes = tensor.shape[-3:]
    positions = [_positions(shape[a], scale[a], offset[a], sizes[a], tensor.device)
                 for a in range(3)]
    return _resample_at(tensor, positions, _axis_order(shape, sizes), mode).contiguous()


def _positions(n_out: int, scale: float, offset: float, n_src: int, device) -> torch.Tensor:
    """Source indices (float64) sampled by the ``n_out`` output voxels of one axis."""
    pos = torch.arange(n_out, dtype=torch.float64, device=device)
    return (pos * scale + offset).clamp_(0, n_src - 1)


def _axis_order(shape: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """Shrinking axes first keeps the intermediate tensors small."""
    return sorted(range(3), key=lambda a: shape[a] / sizes[a])


def _resample_at(tensor: torch.Tensor, positions: list[torch.Tensor], order: list[int],
                 mode: str) -> torch.Tensor:
    """One 1D pass per axis in ``order``, sampling the last three axes at ``positions``."""
    if mode != "nearest" and not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    elif mode == "nearest" and tensor.dtype not in _INDEXABLE:
        tensor = tensor.to(torch.int64)
    lead = tensor.ndim - 3
    for axis in order:
        pos = positions[axis]
        if _is_identity(pos, tensor.shape[lead + axis]):
            continue
        tensor = _AXIS_FN[mode](tensor, lead + axis, pos)
    return tensor


_INDEXABLE = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
              torch.float16, torch.bfloat16, torch.float32, torch.float64}


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory whatever its layout (NIfTI arrays are Fortran-ordered).

    The 1D passes read strided input and write contiguous output, so no layout copy
    is needed: for a 512 x 512 x 300 int16 CT, ``np.ascontiguousarray`` alone took
    1.2 s, twice the whole resampling. Negative strides (flipped views) are copied.
    """
    if any(s < 0 for s in array.strides) or not array.flags.aligned:
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)


def _nearest(t: torch.Tensor, dim: int, pos: torch.Tensor) -> torch.Tensor:
    return t.index_select(dim, torch.floor(pos + 0.5).long())


def _is_identity(pos: torch.Tensor, n_src: int) -> bool:
    """True when output index i samples source index i exactly (the pass is skipped)."""
    return len(pos) == n_src and bool((pos == torch.arange(n_src, device=pos.device)).all())


def _linear_taps(pos: torch.Tensor, n_src: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two source indices (i0, i1) and the float64 weight of i1 for each position of a
    linear pass over ``n_src`` voxels (i0 <= n_src - 2 so that i1 = i0 + 1 when n_src > 1)."""
    i0 = pos.floor().long().clamp_(0, max(n_src - 2, 0))
    i1 = (i0 + 1).clamp_(max=n_src - 1)
    return i0, i1, pos - i0


def _linear(t: torch.Tensor, dim: int, pos: torch.Tensor) -> torch.Tensor:
    i0, i1, frac = _linear_taps(pos, t.shape[dim])
    w = frac.to(t.dtype).view(_bshape(t.ndim, dim))
    a = t.index_select(dim, i0)
    b = t.index_select(dim, i1)
    return a.add_(b.sub_(a).mul_(w))


def _cubic(t: torch.Tensor, dim: int, pos: torch.Tensor) -> torch.Tensor:
    n = t.shape[dim]
    base = pos.floor()
    frac = pos - base
    out = None
    for k in (-1, 0, 1, 2):
        w = _keys(frac - k).to(t.dtype).view(_bshape(t.ndim, dim))
        idx = (base.long() + k).clamp_(0, n - 1)
        term = t.index_select(dim, idx).mul_(w)
        out = term if out is None else out.add_(term)
    return out  # type: ignore[return-value]


def _keys(d: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys cubic convolution kernel at distances ``d``."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _bshape(ndim: int, dim: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = -1
    return shape


_AXIS_FN = {"nearest": _nearest, "linear": _linear, "cubic": _cubic}
