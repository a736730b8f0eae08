"""nnU-Net's resampling rules, reproduced number for number, with a memory-bounded path.

nnU-Net v2 resamples with its ``resample_data_or_seg_to_shape``: every channel through
scikit-image's ``resize`` (spline ``order``, edge mode, no anti-aliasing, output clipped
to the input's range), or, when one axis is anisotropic (its spacing more than
:data:`ANISOTROPY_THRESHOLD` times the smallest), slice by slice in the plane of the
other two axes and then along that axis with ``order_z`` (``scipy.ndimage.map_coordinates``,
nearest edge). Arrays here are channel first ``(C, a0, a1, a2)`` in nnU-Net's frame (see
:mod:`medseg.nnunet.preprocess`); spacings are in mm in the same axis order.

:func:`iter_resampled` gives the result in slabs along one axis, so the labels of a large
image never need the full ``(K, native)`` float array. A slab of the in-plane pass is the
same ``resize`` on the same slices; a slab of a 3D pass is ``map_coordinates`` at the very
coordinates ``scipy.ndimage.zoom`` uses (``(i + 0.5) * n_in / n_out - 0.5``), which gives
``zoom``'s numbers bit for bit (``zoom`` and ``map_coordinates`` share the interpolation
kernel and its summation order); the clip uses the whole channel's range, as ``resize``
does. Values are interpolated in float64 and stored in the input's dtype, as nnU-Net does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medseg.errors import CheckpointError, check_option

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "FUNCTIONS",
    "ResamplingRule",
    "iter_resampled",
    "resample",
    "target_shape",
]

#: Spacing ratio (largest / smallest) above which one axis is resampled on its own.
ANISOTROPY_THRESHOLD = 3.0
#: nnU-Net resampling functions reproduced here (plans' ``resampling_fn_*``).
FUNCTIONS = ("resample_data_or_seg_to_shape",)
#: Output voxels per channel in one slab (each costs 8 bytes of value and 24 of coordinates).
SLAB_VOXELS = 1 << 20


@dataclass(frozen=True)
class ResamplingRule:
    """How nnU-Net resamples images or network outputs (a plans' ``resampling_fn_*_kwargs``).

    Parameters
    ----------
    order : spline order of the 3D or in-plane pass (3 for images, 1 for probabilities).
    order_z : spline order along the anisotropic axis when it is resampled on its own.
    force_separate_z : True / False forces the separate pass on / off; None lets the
        anisotropy rule decide (:meth:`separate_axis`).
    is_seg : nnU-Net's flag for label maps; medseg never resamples labels this way, so
        it must be False (checked by :meth:`from_plans`).
    """

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    is_seg: bool = False

    @classmethod
    def from_plans(cls, function: str, kwargs: Mapping,
                   source: str | os.PathLike | None = None) -> ResamplingRule:
        """The rule of a plans' ``resampling_fn_X`` name and its ``resampling_fn_X_kwargs``.

        Raises
        ------
        CheckpointError : a function other than :data:`FUNCTIONS`, an unknown keyword, or
            ``is_seg`` true; the message names ``source`` (the plans file).
        """
        check_option(function, FUNCTIONS, "nnU-Net resampling function", CheckpointError,
                     source)
        unknown = sorted(set(kwargs) - {"order", "order_z", "force_separate_z", "is_seg"})
        if unknown:
            raise CheckpointError(f"unknown keyword {unknown[0]!r} in the kwargs of {function}: "
                                  "expected order, order_z, force_separate_z, is_seg", source)
        rule = cls.from_dict(kwargs)
        if rule.is_seg:
            raise CheckpointError(f"{function} with is_seg=True resamples label maps; images and "
                                  "probabilities need is_seg=False", source)
        return rule

    def to_dict(self) -> dict:
        """JSON-able form; :meth:`from_dict` reads it back exactly."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ResamplingRule:
        force = data.get("force_separate_z")
        return cls(int(data.get("order", 3)), int(data.get("order_z", 0)),
                   None if force is None else bool(force), bool(data.get("is_seg", False)))

    def separate_axis(self, spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
        """The axis resampled on its own going from ``spacing`` to ``new_spacing`` (mm), or None.

        With ``force_separate_z`` None: the axis of the largest spacing of ``spacing`` if it
        is more than :data:`ANISOTROPY_THRESHOLD` times the smallest, else the same test on
        ``new_spacing``. An axis is chosen only when exactly one axis has the largest spacing.
        """
        if self.force_separate_z is False:
            return None
        if self.force_separate_z:
            return _lowres_axis(spacing)
        for candidate in (spacing, new_spacing):
            if max(candidate) / min(candidate) > ANISOTROPY_THRESHOLD:
                return _lowres_axis(candidate)
        return None


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    values = np.asarray(spacing, dtype=np.float64)
    axes = np.flatnonzero(values.max() / values == 1)
    return int(axes[0]) if len(axes) == 1 else None


def target_shape(shape: Sequence[int], spacing: Sequence[float],
                 new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Voxels after resampling ``shape`` from ``spacing`` to ``new_spacing`` (mm), rounded
    half to even as nnU-Net's ``compute_new_shape`` does."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, new_spacing, shape))


def resample(data: np.ndarray, shape: Sequence[int], axis: int | None,
             rule: ResamplingRule) -> np.ndarray:
    """``data`` (C, a0, a1, a2) resampled to ``shape`` (voxels), in ``data``'s dtype.

    ``axis`` is the separately resampled axis (:meth:`ResamplingRule.separate_axis`) or
    None. Equal to nnU-Net's ``resample_data_or_seg`` (same functions, same arithmetic).
    """
    shape = tuple(int(s) for s in shape)
    if shape == tuple(data.shape[1:]):
        return data
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for index, block in iter_resampled(data, shape, axis, rule, slab_voxels=None):
        out[index] = block
    return out


def iter_resampled(data: np.ndarray, shape: Sequence[int], axis: int | None,
                   rule: ResamplingRule, slab_voxels: int | None = SLAB_VOXELS,
                   ) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """``resample(data, shape, axis, rule)`` in slabs: ``(index, block)`` pairs, ``block``
    (C, ...) in ``data``'s dtype being ``result[index]``.

    Slabs run along ``axis`` when it is given, else along a0, each about ``slab_voxels``
    output voxels per channel. ``slab_voxels=None`` does a 3D pass in one piece with
    scikit-image (as fast as nnU-Net; the in-plane pass is always slab-wise). Peak memory
    besides the blocks: the float64 values and coordinates of one slab of one channel.
    """
    shape = tuple(int(s) for s in shape)
    if shape == tuple(data.shape[1:]):  # nnU-Net leaves the array untouched (no clip)
        yield from _identity_slabs(data, slab_voxels)
    elif axis is not None:
        yield from _separate_slabs(data, shape, axis, rule, slab_voxels or SLAB_VOXELS)
    elif slab_voxels is None:
        yield (slice(None),) * 4, _resize_channels(data, shape, rule.order)
    else:
        yield from _zoom_slabs(data, shape, rule.order, slab_voxels)


def _slab_ranges(n: int, plane: int, slab_voxels: int | None) -> Iterator[tuple[int, int]]:
    step = n if slab_voxels is None else max(1, int(slab_voxels) // max(plane, 1))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _axis_index(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    index = [slice(None)] * 4
    index[axis + 1] = slice(start, stop)
    return tuple(index)


def _identity_slabs(data: np.ndarray, slab_voxels: int | None):
    for start, stop in _slab_ranges(data.shape[1], data[0, 0].size, slab_voxels):
        index = _axis_index(0, start, stop)
        yield index, data[index]


def _resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """scikit-image ``resize`` as nnU-Net calls it (float64 in and out)."""
    from skimage.transform import resize

    return resize(image.astype(np.float64, copy=False), tuple(shape), order, mode="edge",
                  anti_aliasing=False)


def _resize_channels(data: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        out[c] = _resize(data[c], shape, order)
    return out


def _grid_positions(n_out: int, n_in: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Source positions of output voxels [start, stop) when n_in voxels become n_out, with
    voxel centres aligned (``scipy.ndimage.zoom(grid_mode=True)``'s arithmetic)."""
    stop = n_out if stop is None else stop
    return (np.arange(start, stop) + 0.5) * (float(n_in) / float(n_out)) - 0.5


def _zoom_slabs(data: np.ndarray, shape: tuple[int, ...], order: int, slab_voxels: int):
    """The 3D pass slab by slab along a0 (``map_coordinates`` at ``zoom``'s positions)."""
    from scipy.ndimage import map_coordinates

    n_in = data.shape[1:]
    rows = [_grid_positions(shape[a], n_in[a]) for a in (1, 2)]
    bounds = [(float(data[c].min()), float(data[c].max())) for c in range(data.shape[0])]
    for start, stop in _slab_ranges(shape[0], shape[1] * shape[2], slab_voxels):
        pos = _grid_positions(shape[0], n_in[0], start, stop)
        lo, hi = _source_range(pos, n_in[0], order)
        grid = _grid([pos - lo, *rows])
        block = np.empty((data.shape[0], stop - start, shape[1], shape[2]), dtype=data.dtype)
        for c in range(data.shape[0]):
            source = np.asarray(data[c, lo:hi], dtype=np.float32 if order <= 1 else np.float64)
            values = map_coordinates(source, grid, output=np.float64, order=order,
                                     mode="nearest")
            block[c] = np.clip(values, *bounds[c], out=values)
        yield _axis_index(0, start, stop), block


def _grid(lines: list[np.ndarray]) -> np.ndarray:
    """(3, n0, n1, n2) float64 positions of every voxel of the grid of three 1D ``lines``
    (``np.meshgrid(indexing="ij")`` stacked, written in place: one array, no copies)."""
    grid = np.empty((3, *(len(line) for line in lines)))
    for axis, line in enumerate(lines):
        view = [1, 1, 1]
        view[axis] = len(line)
        grid[axis] = line.reshape(view)
    return grid


def _source_range(positions: np.ndarray, n: int, order: int) -> tuple[int, int]:
    """Source indices [lo, hi) that interpolating at ``positions`` (ascending) reads.

    Order 0 and 1 read ``floor(p)`` and ``floor(p) + 1``; so do they in the sub-array, with
    the same edge clamping where ``lo`` is 0 or ``hi`` is ``n``. Splines above order 1 are
    prefiltered along the whole axis: all of it. Shifting positions by the integer ``lo``
    is exact, and a float32 source gives the float64 results of a float64 one (every
    float16 and float32 is exactly a float64).
    """
    if order > 1:
        return 0, n
    return max(0, int(np.floor(positions[0]))), min(n, int(np.floor(positions[-1])) + 2)


def _separate_slabs(data: np.ndarray, shape: tuple[int, ...], axis: int, rule: ResamplingRule,
                    slab_voxels: int):
    """In-plane ``resize`` of each slice across ``axis``, then ``order_z`` along ``axis``."""
    from scipy.ndimage import map_coordinates

    n_axis = data.shape[axis + 1]
    plane = tuple(s for a, s in enumerate(shape) if a != axis)
    for start, stop in _slab_ranges(shape[axis], plane[0] * plane[1], slab_voxels):
        if shape[axis] == n_axis:
            lo, hi, grid = start, stop, None
        else:
            pos = _grid_positions(shape[axis], n_axis, start, stop)
            lo, hi = _source_range(pos, n_axis, rule.order_z)
            lines = [np.arange(n, dtype=np.float64) for n in plane]
            lines.insert(axis, pos - lo)
            grid = _grid(lines)
        block = np.empty((data.shape[0], *grid.shape[1:]) if grid is not None else
                         _block_shape(data.shape[0], plane, axis, stop - start), dtype=data.dtype)
        for c in range(data.shape[0]):
            slices = np.stack([_resize(np.take(data[c], i, axis=axis), plane, rule.order)
                               for i in range(lo, hi)], axis=axis)
            block[c] = slices if grid is None else map_coordinates(
                slices, grid, order=rule.order_z, mode="nearest")
        yield _axis_index(axis, start, stop), block


def _block_shape(channels: int, plane: tuple[int, ...], axis: int, n: int) -> tuple[int, ...]:
    shape = list(plane)
    shape.insert(axis, n)
    return (channels, *shape)
