"""nnU-Net's resampling rules as separable matrices: nnU-Net's numbers, bounded memory.

nnU-Net v2 resamples with its ``resample_data_or_seg_to_shape``: every channel through
scikit-image's ``resize`` (spline ``order``, edge mode, no anti-aliasing, output clipped
to the input's range), or, when one axis is anisotropic (its spacing more than
:data:`ANISOTROPY_THRESHOLD` times the smallest), slice by slice in the plane of the
other two axes (each slice clipped to its own range) and then along that axis with
``order_z`` (``scipy.ndimage.map_coordinates`` at ``(i + 0.5) * n_in / n_out - 0.5``,
nearest edge). Arrays here are channel first ``(C, a0, a1, a2)`` in nnU-Net's frame (see
:mod:`medseg.transforms.nnunet`); spacings are in mm in the same axis order.

Both are linear and separable per axis (the spline prefilter, the edge padding and the
tensor-product interpolation all act axis by axis), so each axis is one ``(n_out, n_in)``
float64 matrix (:func:`axis_matrix`), built by running nnU-Net's own 1D function
(``resize`` or ``map_coordinates``) on the unit vectors, and a resampling is three matrix
products plus nnU-Net's clip. Our own path, written because it is measurably better: in
``benchmarks/bench_nnunet.py`` (512 x 512 x 300 CT to 64 x 64 x 38 and 4 classes of logits
back, 2 cores) the whole prediction took 6.7 s instead of the 24 s that scikit-image /
``map_coordinates`` resampling cost, at 0.86 GB peak instead of 2.8, never holding a
float64 copy of the image. Values equal scikit-image's up to float64 rounding (1e-15
relative); where that rounding decides the stored float16 / float32 value (a value on a
rounding tie, common when float16 logits are interpolated with weights such as 0.2 / 0.8),
order <= 1 recomputes the voxel with ``map_coordinates``, which gives nnU-Net's bits
(:func:`_fix_ties`). Tested bit for bit against nnunetv2.

:func:`iter_resampled` gives the result in slabs along a0 (or along the separately
resampled axis), so the labels of a large image never need the full ``(K, native)`` array.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from medseg.errors import CheckpointError, check_option
from medseg.volume import LabelMap, Volume

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "NnunetResampling",
    "axis_matrix",
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
#: Output voxels per channel in one slab (each costs 8 bytes of float64 value).
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


@dataclass(frozen=True)
class NnunetResampling:
    """nnU-Net's resampling of network outputs as a rule of a ``Resampled`` history step.

    Volumes are in the window frame (x, y, z) = nnU-Net's (a2, a1, a0); the arithmetic runs
    in nnU-Net's frame on a reversed view, so values are nnU-Net's bit for bit.

    Attributes
    ----------
    rule : the plans' ``resampling_fn_probabilities`` settings.
    separate_axis : the axis (nnU-Net's frame: 0 = window z) resampled on its own, or None.
    slab_voxels : output voxels per channel resampled at a time when making labels (the
        memory knob of :meth:`resample_to_labels`).
    """

    rule: ResamplingRule
    separate_axis: int | None = None
    slab_voxels: int = SLAB_VOXELS
    name: ClassVar[str] = "nnunet"

    def resample(self, volume: Volume, shape: Sequence[int], affine: np.ndarray,
                 device: Any = None) -> Volume:
        """``volume`` (K, x, y, z) resampled to ``shape`` (voxels, window frame) in its own
        dtype, on the grid ``affine``; ``device`` unused (NumPy)."""
        out = resample(_reversed(volume.array), tuple(shape)[::-1], self.separate_axis,
                       self.rule)
        return type(volume)(_reversed(out), affine, volume.meta)

    def resample_to_labels(self, volume: Volume, shape: Sequence[int], affine: np.ndarray,
                           device: Any, labels_of: Callable[[np.ndarray], np.ndarray],
                           dtype: np.dtype) -> LabelMap:
        """The labels of ``volume`` resampled to ``shape``, slab by slab: ``labels_of`` maps a
        resampled (K, ...) block to its labels, of ``dtype``; the full (K, shape) array is
        never built. Peak memory besides input and labels: about
        ``slab_voxels * (6 K + 32)`` bytes."""
        labels = np.zeros(tuple(shape)[::-1], dtype=dtype)
        for index, block in iter_resampled(_reversed(volume.array), tuple(shape)[::-1],
                                           self.separate_axis, self.rule, self.slab_voxels):
            labels[index[1:]] = labels_of(block)
        return LabelMap(_reversed(labels), affine, volume.meta)

    def to_dict(self) -> dict:
        return {"rule": self.name, **self.rule.to_dict(), "separate_axis": self.separate_axis,
                "slab_voxels": self.slab_voxels}

    @classmethod
    def from_dict(cls, data: Mapping) -> NnunetResampling:
        axis = data.get("separate_axis")
        return cls(ResamplingRule.from_dict(data), None if axis is None else int(axis),
                   int(data.get("slab_voxels", SLAB_VOXELS)))


def _reversed(array: np.ndarray) -> np.ndarray:
    """The spatial axes of (x, y, z) or (C, x, y, z) reversed (a view): window frame <->
    nnU-Net's frame."""
    lead = array.ndim - 3
    return array.transpose(*range(lead), *(lead + a for a in (2, 1, 0)))


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
    None. Equal to nnU-Net's ``resample_data_or_seg`` up to float64 rounding.
    """
    shape = tuple(int(s) for s in shape)
    if shape == tuple(data.shape[1:]):
        return data
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for index, block in iter_resampled(data, shape, axis, rule):
        out[index] = block
    return out


def iter_resampled(data: np.ndarray, shape: Sequence[int], axis: int | None,
                   rule: ResamplingRule, slab_voxels: int = SLAB_VOXELS,
                   ) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """``resample(data, shape, axis, rule)`` in slabs: ``(index, block)`` pairs, ``block``
    (C, ...) in ``data``'s dtype being ``result[index]``.

    Slabs run along ``axis`` when it is given, else along a0, each about ``slab_voxels``
    output voxels per channel. Peak memory besides the blocks: the float64 values of one
    slab, or, when every output slab reads every input slice (a spline above order 1 along
    the slab axis) or the plane shrinks, the plane-resampled float64 input.
    """
    shape = tuple(int(s) for s in shape)
    if shape == tuple(data.shape[1:]):  # nnU-Net leaves the array untouched (no clip)
        yield from _identity_slabs(data, slab_voxels)
        return
    passes = _Passes.of(tuple(data.shape[1:]), shape, axis, rule)
    yield from _slabs(data, shape, passes, max(1, int(slab_voxels)))


@functools.lru_cache(maxsize=32)
def axis_matrix(n_in: int, n_out: int, order: int, separate: bool) -> np.ndarray | None:
    """The (n_out, n_in) float64 matrix of nnU-Net's 1D resampling of n_in voxels to n_out,
    or None when they are equal (nnU-Net keeps such an axis).

    Column j is nnU-Net's function applied to the j-th unit vector: scikit-image's
    ``resize`` (spline ``order``, edge mode, no anti-aliasing, unclipped), or along a
    ``separate`` axis ``map_coordinates`` (``order``, nearest edge) at
    ``(i + 0.5) * n_in / n_out - 0.5``. Read-only (cached).
    """
    if n_in == n_out:
        return None
    eye = np.eye(n_in)
    if separate:
        from scipy.ndimage import map_coordinates

        positions = _positions(n_in, n_out)
        columns = [map_coordinates(e, positions[None], order=order, mode="nearest")
                   for e in eye]
    else:
        from skimage.transform import resize

        columns = [resize(e, (n_out,), order, mode="edge", anti_aliasing=False, clip=False)
                   for e in eye]
    matrix = np.stack(columns, axis=1)
    matrix.flags.writeable = False
    return matrix


@dataclass(frozen=True)
class _Passes:
    """One resampling as per-axis matrices.

    ``slab``: the axis the output is cut along (a0, or the separate axis); ``plane``: the
    other two, the shrinking one first; ``separate``: nnU-Net's separate-axis mode (plane
    first, each slice clipped to its own range, then the slab axis); ``stage_all``: resample
    the plane of every input slice once, up front; ``order``: the plane's spline order;
    ``exact_ties``: whether rounding ties are recomputed by nnU-Net's own function
    (:func:`_fix_ties`: order <= 1, and nearest along a separate axis).
    """

    matrices: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]
    slab: int
    plane: tuple[int, int]
    separate: bool
    stage_all: bool
    order: int
    exact_ties: bool

    @classmethod
    def of(cls, n_in: tuple[int, ...], n_out: tuple[int, ...], axis: int | None,
           rule: ResamplingRule) -> _Passes:
        slab = 0 if axis is None else axis
        matrices = tuple(axis_matrix(n_in[a], n_out[a], rule.order_z if a == axis else
                                     rule.order, a == axis) for a in range(3))
        plane = sorted((a for a in range(3) if a != slab), key=lambda a: n_out[a] / n_in[a])
        in_plane = int(np.prod([n_in[a] for a in plane]))
        out_plane = int(np.prod([n_out[a] for a in plane]))
        slab_order = rule.order_z if axis is not None else rule.order
        exact = rule.order <= 1 and (axis is None or rule.order_z == 0)
        return cls(matrices, slab, (plane[0], plane[1]), axis is not None,  # type: ignore[arg-type]
                   slab_order > 1 or out_plane <= in_plane, rule.order, exact)


def _slabs(data: np.ndarray, shape: tuple[int, ...], passes: _Passes, slab_voxels: int):
    s, matrix = passes.slab, passes.matrices[passes.slab]
    n_s = data.shape[s + 1]
    staged = ([_plane_stage(data[c], passes, 0, n_s, slab_voxels) for c in range(len(data))]
              if passes.stage_all else None)
    bounds = None if passes.separate else [(data[c].min(), data[c].max())
                                            for c in range(len(data))]
    out_plane = int(np.prod([shape[a] for a in passes.plane]))
    for start, stop in _slab_ranges(shape[s], out_plane, slab_voxels):
        rows = None if matrix is None else matrix[start:stop]
        lo, hi = (start, stop) if rows is None else _columns(rows)
        block = np.empty(_block_shape(len(data), shape, s, stop - start), dtype=data.dtype)
        for c in range(len(data)):
            values = (staged[c][_axis_index(s, lo, hi)[1:]] if staged is not None
                      else _plane_stage(data[c], passes, lo, hi, slab_voxels))
            if rows is not None:
                values = _along(values, rows[:, lo:hi], s)
            if bounds is not None:
                np.clip(values, *bounds[c], out=values)
            if passes.exact_ties:
                _fix_ties(values, data[c], passes, (start, lo, hi),
                          None if bounds is None else bounds[c])
            block[c] = values
        yield _axis_index(s, start, stop), block


def _plane_stage(channel: np.ndarray, passes: _Passes, lo: int, hi: int,
                 slab_voxels: int) -> np.ndarray:
    """Slices [lo, hi) along the slab axis of ``channel`` (a0, a1, a2), resampled in the
    plane (float64); in separate mode each slice clipped to its own input range. Converted
    to float64 a few slices at a time."""
    s = passes.slab
    shape = [channel.shape[a] if passes.matrices[a] is None or a == s
             else passes.matrices[a].shape[0] for a in range(3)]
    shape[s] = hi - lo
    out = np.empty(shape)
    in_plane = channel.size // max(channel.shape[s], 1)
    for a, b in _slab_ranges(hi - lo, in_plane, slab_voxels):
        source = channel[_axis_index(s, lo + a, lo + b)[1:]]
        values = source.astype(np.float64)
        for axis in passes.plane:
            values = _along(values, passes.matrices[axis], axis)
        if passes.separate:
            plane = tuple(passes.plane)
            np.clip(values, source.min(axis=plane, keepdims=True),
                    source.max(axis=plane, keepdims=True), out=values)
        out[_axis_index(s, a, b)[1:]] = values
    return out


def _fix_ties(values: np.ndarray, channel: np.ndarray, passes: _Passes,
              rows: tuple[int, int, int], bounds: tuple | None) -> None:
    """Recompute with nnU-Net's own interpolation the voxels of ``values`` (float64, the slab
    of ``channel`` starting at ``rows[0]`` along the slab axis, read from input rows
    ``rows[1]:rows[2]``) within 1e-12 (relative) of a rounding tie of ``channel``'s dtype:
    there the last float64 bit decides the stored value (interpolating float16 logits with
    weights such as 0.2 / 0.8 lands exactly on ties). Order <= 1 reads only neighbours, so
    ``map_coordinates`` at those voxels' positions, on those input rows only (an exact shift
    by ``rows[1]``), is cheap; it gives ``zoom``'s numbers bit for bit (same kernel, same
    summation order). ``bounds``: the channel's (min, max) of the 3D pass' clip.
    """
    from scipy.ndimage import map_coordinates

    near = _near_ties(values, channel.dtype)
    if near is None or not near.any():
        return
    start, lo, hi = rows
    index = list(np.nonzero(near))
    voxel = list(index)
    voxel[passes.slab] = voxel[passes.slab] + start
    plane = [a for a in range(3) if a != passes.slab] if passes.separate else [0, 1, 2]
    coords = np.stack([_grid_positions(channel.shape[a], passes, a)[voxel[a]] for a in plane])
    if not passes.separate:  # the slab axis is a0
        coords[0] -= lo
        exact = map_coordinates(channel[lo:hi].astype(np.float32), coords, output=np.float64,
                                order=passes.order, mode="nearest")
        values[tuple(index)] = np.clip(exact, *bounds)
        return
    matrix = passes.matrices[passes.slab]
    source = voxel[passes.slab] if matrix is None else np.argmax(matrix, axis=1)[
        voxel[passes.slab]]
    exact = np.empty(len(source))
    for k in np.unique(source):
        image = np.take(channel, k, axis=passes.slab).astype(np.float32)
        at = source == k
        exact[at] = np.clip(map_coordinates(image, coords[:, at], output=np.float64,
                                            order=passes.order, mode="nearest"),
                            image.min(), image.max())
    values[tuple(index)] = exact


#: Mantissa bits of the float dtypes values are stored in.
_MANTISSA = {np.dtype(np.float16): 10, np.dtype(np.float32): 23}


def _near_ties(values: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """Where float64 ``values`` lie within 2**12 float64 ulps (1e-12 relative) of a
    rounding tie of ``dtype``: the mantissa bits ``dtype`` drops are 100...0, give or take.
    None for dtypes without ties here (float64, integers). Subnormals of ``dtype`` are not
    checked (|logits| below 6e-5 do not decide a label)."""
    if dtype not in _MANTISSA:
        return None
    drop = 52 - _MANTISSA[dtype]
    low = np.bitwise_and(np.ascontiguousarray(values).view(np.int64), (1 << drop) - 1)
    low -= (1 << (drop - 1)) - (1 << 12)
    return low.view(np.uint64) <= (1 << 13)


def _grid_positions(n_in: int, passes: _Passes, axis: int) -> np.ndarray:
    """:func:`_positions` of every output voxel along ``axis`` of ``passes``."""
    matrix = passes.matrices[axis]
    return _positions(n_in, n_in if matrix is None else len(matrix))


def _positions(n_in: int, n_out: int) -> np.ndarray:
    """Source positions of the n_out output voxels when n_in become n_out, voxel centres
    aligned: ``(i + 0.5) * n_in / n_out - 0.5`` (``scipy.ndimage.zoom(grid_mode=True)``'s
    arithmetic and nnU-Net's separate-axis coordinates)."""
    return (np.arange(n_out) + 0.5) * (float(n_in) / float(n_out)) - 0.5


def _along(values: np.ndarray, matrix: np.ndarray | None, axis: int) -> np.ndarray:
    """``matrix`` (n_out, n_in) applied along ``axis`` of the 3D float64 ``values``."""
    if matrix is None:
        return values
    if axis == 2:
        return values @ matrix.T
    if axis == 1:
        return np.matmul(matrix, values)
    n0, n1, n2 = values.shape
    return (matrix @ values.reshape(n0, n1 * n2)).reshape(len(matrix), n1, n2)


def _columns(rows: np.ndarray) -> tuple[int, int]:
    """[lo, hi): the input range that output ``rows`` of an axis matrix read."""
    used = np.flatnonzero(np.any(rows != 0, axis=0))
    return int(used[0]), int(used[-1]) + 1


def _slab_ranges(n: int, plane: int, slab_voxels: int) -> Iterator[tuple[int, int]]:
    step = max(1, int(slab_voxels) // max(plane, 1))
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _axis_index(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    index = [slice(None)] * 4
    index[axis + 1] = slice(start, stop)
    return tuple(index)


def _identity_slabs(data: np.ndarray, slab_voxels: int):
    for start, stop in _slab_ranges(data.shape[1], data[0, 0].size, slab_voxels):
        index = _axis_index(0, start, stop)
        yield index, data[index]


def _block_shape(channels: int, shape: tuple[int, ...], axis: int, n: int) -> tuple[int, ...]:
    block = list(shape)
    block[axis] = n
    return (channels, *block)
