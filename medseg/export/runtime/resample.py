"""medseg's grid resampling (:mod:`medseg.transforms.resample`) in NumPy, for the runner.

The same arithmetic as the torch engine: per axis ``src = scale * i + offset`` (the index
map of :func:`medseg.transforms.grid.index_map`), positions clamped to the source (edge
values replicate), one 1D pass per axis, shrinking axes first; ``"linear"`` is
``a + (b - a) * w`` in float32 with ``w`` the float64 fraction cast to float32,
``"cubic"`` Keys' kernel (a = -0.5), ``"nearest"`` rounds half up. Written again here
because the engine is torch (it runs on GPUs) and the runner must not need torch; the
tests hold the two to float32 rounding. Arrays are (x, y, z) or (C, x, y, z).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from medseg.transforms.grid import index_map

__all__ = ["iter_resampled_slabs", "resample_array", "resample_to_grid"]

MODES = ("linear", "cubic", "nearest")
#: Output voxels per channel resampled at a time by :func:`iter_resampled_slabs`.
SLAB_VOXELS = 1 << 22


def resample_to_grid(array: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                     target_affine: np.ndarray, mode: str) -> np.ndarray:
    """``array`` on the grid (affine) sampled on the grid ``(shape, target_affine)``."""
    scale, offset = index_map(affine, target_affine)
    return resample_array(array, scale, offset, shape, mode)


def resample_array(array: np.ndarray, scale: Sequence[float], offset: Sequence[float],
                   shape: Sequence[int], mode: str) -> np.ndarray:
    """The last three axes of ``array`` sampled at ``scale * i + offset`` for output voxels
    ``i < shape`` (float32 for linear / cubic, the dtype kept for nearest)."""
    sizes = array.shape[-3:]
    positions = [_positions(int(shape[a]), scale[a], offset[a], sizes[a]) for a in range(3)]
    return _resample_at(array, positions, _axis_order(shape, sizes), mode)


def iter_resampled_slabs(array: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                         target_affine: np.ndarray, mode: str,
                         slab_voxels: int = SLAB_VOXELS
                         ) -> Iterator[tuple[slice, np.ndarray]]:
    """:func:`resample_to_grid` in slabs along the output's z: ``(z slice, block)`` pairs,
    each block reading only the source slices its taps need (memory: one slab)."""
    scale, offset = index_map(affine, target_affine)
    sizes = array.shape[-3:]
    positions = [_positions(int(shape[a]), scale[a], offset[a], sizes[a]) for a in range(3)]
    order = _axis_order(shape, sizes)
    step = max(1, int(slab_voxels) // max(1, int(shape[0]) * int(shape[1])))
    for z0 in range(0, int(shape[2]), step):
        z1 = min(z0 + step, int(shape[2]))
        pos = positions[2][z0:z1]
        lo, hi = _source_range(pos, sizes[2], mode)
        block = _resample_at(array[..., lo:hi], positions[:2] + [pos - lo], order, mode,
                             n_src_z=(sizes[2], lo))
        yield slice(z0, z1), block


def _source_range(pos: np.ndarray, n_src: int, mode: str) -> tuple[int, int]:
    """[lo, hi): the source slices the taps of ``pos`` read."""
    if mode == "nearest":
        idx = np.floor(pos + 0.5).astype(np.int64)
        return int(idx.min()), int(idx.max()) + 1
    if mode == "linear":
        i0, i1, _ = _linear_taps(pos, n_src)
        return int(i0.min()), int(i1.max()) + 1
    base = np.floor(pos).astype(np.int64)
    return max(0, int(base.min()) - 1), min(n_src, int(base.max()) + 3)


def _positions(n_out: int, scale: float, offset: float, n_src: int) -> np.ndarray:
    return np.clip(np.arange(n_out, dtype=np.float64) * scale + offset, 0, n_src - 1)


def _axis_order(shape: Sequence[int], sizes: Sequence[int]) -> list[int]:
    return sorted(range(3), key=lambda a: shape[a] / sizes[a])


def _resample_at(array: np.ndarray, positions: list[np.ndarray], order: list[int], mode: str,
                 n_src_z: tuple[int, int] | None = None) -> np.ndarray:
    """One pass per axis in ``order``. ``n_src_z``: (source slices along z, offset of this
    block in them), so a slab's taps are those of the whole axis."""
    if mode != "nearest" and array.dtype.kind != "f":
        array = array.astype(np.float32)
    lead = array.ndim - 3
    for axis in order:
        pos = positions[axis]
        n, shift = (n_src_z if axis == 2 and n_src_z is not None
                    else (array.shape[lead + axis], 0))
        if n_src_z is None and len(pos) == n and np.array_equal(pos, np.arange(n)):
            continue
        array = _PASSES[mode](array, lead + axis, pos, n, shift)
    return np.ascontiguousarray(array)


def _linear_taps(pos: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, max(n_src - 2, 0))
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, pos - i0


def _shape(ndim: int, axis: int) -> list[int]:
    shape = [1] * ndim
    shape[axis] = -1
    return shape


def _linear(t: np.ndarray, axis: int, pos: np.ndarray, n: int, shift: int) -> np.ndarray:
    i0, i1, frac = _linear_taps(pos + shift, n)
    w = frac.astype(t.dtype).reshape(_shape(t.ndim, axis))
    a = np.take(t, i0 - shift, axis=axis)
    b = np.take(t, i1 - shift, axis=axis)
    b -= a
    b *= w
    a += b
    return a


def _nearest(t: np.ndarray, axis: int, pos: np.ndarray, n: int, shift: int) -> np.ndarray:
    return np.take(t, np.floor(pos + 0.5).astype(np.int64), axis=axis)


def _cubic(t: np.ndarray, axis: int, pos: np.ndarray, n: int, shift: int) -> np.ndarray:
    full = pos + shift
    base = np.floor(full)
    frac = full - base
    out = None
    for k in (-1, 0, 1, 2):
        w = _keys(frac - k).astype(t.dtype).reshape(_shape(t.ndim, axis))
        idx = np.clip(base.astype(np.int64) + k, 0, n - 1) - shift
        term = np.take(t, idx, axis=axis) * w
        out = term if out is None else out + term
    return out  # type: ignore[return-value]


def _keys(d: np.ndarray, a: float = -0.5) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


_PASSES = {"linear": _linear, "nearest": _nearest, "cubic": _cubic}
