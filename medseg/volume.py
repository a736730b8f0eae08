"""``Volume``: a voxel array with the affine that places it in RAS+ world space.

Conventions (see DESIGN.md):

* ``array`` is indexed ``(x, y, z)`` for a single-channel image, or
  ``(C, x, y, z)`` when it has channels (channel first);
* ``affine`` is a 4x4 float64 matrix mapping voxel indices ``(i, j, k, 1)`` to
  RAS+ world coordinates in millimetres (nibabel convention);
* ``spacing_mm`` is derived from the affine, in the array's axis order.

Geometry-changing helpers return a new Volume; nothing mutates geometry in place.

Two typed Volumes say what a network output is, so that its type, not a string
argument, decides how it is resampled and padded (TorchIO's ``LabelMap``):

* :class:`LabelMap` -- integer labels (x, y, z), 0 = background; nearest neighbour,
  padded with 0;
* :class:`Probabilities` -- float class probabilities (K, x, y, z), channel 0 =
  background; linear, padded with certain background (1 in channel 0, 0 elsewhere);
  :class:`RegionProbabilities` -- one sigmoid per overlapping region (nnU-Net's region-based
  models), no background channel: padded with 0;
* :class:`Logits` -- network outputs (K, x, y, z) before their activation, for models whose
  outputs are resampled as logits and activated afterwards (nnU-Net's export); linear, in
  their own dtype. They become probabilities at the step their preprocessing's
  :class:`~medseg.transforms.history.History` says (its ``activation``).

Readers return plain Volumes; :meth:`Volume.with_array` and :meth:`Volume.crop` keep
the type (a LabelMap stays a LabelMap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import DataError, GeometryError

__all__ = ["LabelMap", "Logits", "Probabilities", "RegionProbabilities", "Volume",
           "orientation_of", "affine_from"]

_AXIS_CODES = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}
#: |det| of the affine's unit axis columns below which :func:`orientation_of` is asked
#: whether every axis still has a direction (its SVD rule fails near 1e-15; above this
#: bound it cannot, so the common case costs no SVD).
_NEARLY_PARALLEL = 1e-12


def orientation_of(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``"RAS"`` or ``"LPS"`` (the direction each axis points to).

    Each voxel axis is assigned the world axis it is closest to (nibabel's
    ``aff2axcodes`` rule); the letter names the direction of increasing index.

    Raises
    ------
    GeometryError
        Two axis columns are so nearly parallel (their unit vectors span less
        than a plane to machine precision) that the rule names no direction for
        an axis, although the affine is not singular (e.g. a column (1e6, 1e-9, 0)
        beside (1e6, 0, 0)).
    """
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=np.float64)
    codes = nio.aff2axcodes(affine)
    if None in codes:
        axis = codes.index(None)
        columns = "; ".join(", ".join(f"{v:.6g}" for v in column) for column in affine[:3, :3].T)
        raise GeometryError(f"affine axis {axis} is nearly parallel to another axis: no world "
                            f"direction can be named for it (axis columns ({columns}) mm)")
    return "".join(codes)


def affine_from(
    spacing_mm: Sequence[float],
    orientation: str = "RAS",
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    rotation: np.ndarray | None = None,
) -> np.ndarray:
    """Build a voxel -> RAS+ mm affine from spacing, axis codes and origin.

    Parameters
    ----------
    spacing_mm : (3,) voxel size in mm along array axes (x, y, z).
    orientation : three axis codes, one of each pair L/R, P/A, I/S (e.g. ``"LPS"``).
    origin_mm : world position (RAS mm) of voxel (0, 0, 0).
    rotation : optional (3, 3) rotation applied in world space (oblique volumes).
    """
    codes = orientation.upper()
    if len(codes) != 3 or sorted(_axis_of(c) for c in codes) != [0, 1, 2]:
        raise GeometryError(
            f"orientation {orientation!r} is not three axis codes with one of L/R, P/A, I/S each"
        )
    direction = np.zeros((3, 3))
    for col, code in enumerate(codes):
        axis = _axis_of(code)
        direction[axis, col] = 1.0 if code == _AXIS_CODES[axis][1] else -1.0
    if rotation is not None:
        direction = np.asarray(rotation, dtype=np.float64) @ direction
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing_mm, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin_mm, dtype=np.float64)
    return affine


def _axis_of(code: str) -> int:
    for axis, pair in _AXIS_CODES.items():
        if code in pair:
            return axis
    raise GeometryError(f"unknown axis code {code!r}: expected one of L, R, P, A, I, S")


class Volume:
    """A 3D image (optionally with channels) and its voxel -> RAS+ mm affine.

    Parameters
    ----------
    array : array-like, shape (x, y, z) or (C, x, y, z)
    affine : (4, 4) voxel index -> RAS+ world mm.
    meta : optional dict of provenance (source path, DICOM UIDs...); copied, never
        used for geometry.
    """

    __slots__ = ("array", "affine", "meta")

    def __init__(self, array: Any, affine: Any, meta: dict | None = None) -> None:
        array = np.asarray(array)
        if array.ndim not in (3, 4):
            raise GeometryError(
                f"a Volume needs a 3D (x, y, z) or 4D (C, x, y, z) array, got shape {array.shape}"
            )
        affine = np.array(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise GeometryError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            det = abs(np.linalg.det(affine[:3, :3]))
        if det < 1e-12:
            raise GeometryError("affine is singular (zero spacing or collinear axes)")
        if not np.isfinite(det):
            raise GeometryError("affine spacing is too large: the voxel volume overflows "
                                f"(axis columns {np.abs(affine[:3, :3]).max(axis=0)} mm)")
        if det < _NEARLY_PARALLEL * np.prod(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))):
            orientation_of(affine)  # raises GeometryError when an axis has no direction
        self.array = array
        self.affine = affine
        self.meta = dict(meta or {})

    # -- derived geometry -------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, (x, y, z) or (C, x, y, z)."""
        return tuple(self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Shape of the spatial axes (x, y, z), in voxels."""
        return tuple(self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def has_channels(self) -> bool:
        return self.array.ndim == 4

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size in mm along (x, y, z): the norms of the affine's columns."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"`` or ``"LPS"``."""
        return orientation_of(self.affine)

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """World position (RAS mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def world_coords(self, ijk: Any) -> np.ndarray:
        """RAS mm of voxel indices ``ijk`` (shape (..., 3))."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    # -- new volumes --------------------------------------------------------
    def with_array(self, array: Any, meta: dict | None = None) -> Volume:
        """A new Volume of this type on the same grid holding ``array`` (same spatial shape)."""
        array = np.asarray(array)
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise GeometryError(
                f"array of spatial shape {tuple(array.shape[-3:])} does not fit a grid of "
                f"shape {self.spatial_shape}"
            )
        return type(self)(array, self.affine, self.meta if meta is None else meta)

    def crop(self, start: Sequence[int], stop: Sequence[int]) -> Volume:
        """Sub-volume ``[start, stop)`` in voxels, of this type; the affine moves its origin
        accordingly."""
        start = [int(s) for s in start]
        stop = [int(s) for s in stop]
        index = (Ellipsis,) + tuple(slice(a, b) for a, b in zip(start, stop))
        affine = self.affine.copy()
        affine[:3, 3] = self.world_coords(start)
        return type(self)(self.array[index], affine, self.meta)

    def same_grid(self, other: Volume, tol_mm: float = 1e-3) -> bool:
        """True when ``other`` has the same spatial shape and an affine within ``tol_mm``."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=tol_mm, rtol=0)
        )

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing_mm)
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.array.dtype}, "
            f"spacing_mm=({sp}), orientation={self.orientation!r})"
        )

    def __array__(self, dtype=None, copy=None):  # noqa: D105 - numpy protocol
        return self.array if dtype is None else self.array.astype(dtype)


class LabelMap(Volume):
    """An integer label map (x, y, z), 0 = background: resampled by nearest neighbour and
    padded with 0 (:attr:`interpolation`, :attr:`background`).

    Parameters
    ----------
    array : integer array-like, shape (x, y, z).
    affine : (4, 4) voxel index -> RAS+ world mm.
    meta : optional provenance dict, as for :class:`Volume`.

    Raises
    ------
    GeometryError : the array is not 3D (e.g. (1, x, y, z) or (K, x, y, z)).
    DataError : the array is not of an integer dtype (floats, bool).
    """

    __slots__ = ()
    interpolation = "nearest"

    def __init__(self, array: Any, affine: Any, meta: dict | None = None) -> None:
        super().__init__(array, affine, meta)
        if self.array.ndim != 3:
            raise GeometryError(
                f"a LabelMap is one (x, y, z) map, got shape {self.array.shape}; "
                "use Probabilities for (K, x, y, z) class probabilities"
            )
        if self.array.dtype.kind not in "iu":
            raise DataError(
                f"a LabelMap needs an integer array (0 = background), got dtype "
                f"{self.array.dtype}; convert integral values with .astype(np.uint8) or use "
                "Probabilities for class probabilities"
            )

    @property
    def background(self) -> int:
        """The value outside a crop box: 0."""
        return 0


class _ChannelMaps(Volume):
    """A floating (K, x, y, z) network output, K >= 1, resampled linearly."""

    __slots__ = ()
    interpolation = "linear"

    def __init__(self, array: Any, affine: Any, meta: dict | None = None) -> None:
        super().__init__(array, affine, meta)
        name = type(self).__name__
        if self.array.ndim != 4 or self.array.shape[0] < 1:
            raise GeometryError(
                f"{name} are (K, x, y, z) with K >= 1 classes, got shape "
                f"{self.array.shape}; use LabelMap for an (x, y, z) label map"
            )
        if self.array.dtype.kind != "f":
            raise DataError(
                f"{name} need a floating array, got dtype {self.array.dtype}; use "
                "LabelMap for integer labels"
            )


class Probabilities(_ChannelMaps):
    """Class probabilities (K, x, y, z), float, channel 0 = background: resampled linearly
    and padded with certain background (1 in channel 0, 0 elsewhere).

    Parameters
    ----------
    array : floating array-like, shape (K, x, y, z), K >= 1 classes.
    affine : (4, 4) voxel index -> RAS+ world mm.
    meta : optional provenance dict, as for :class:`Volume`.

    Raises
    ------
    GeometryError : the array is not 4D (K, x, y, z) with K >= 1.
    DataError : the array is not of a floating dtype.
    """

    __slots__ = ()

    @property
    def num_classes(self) -> int:
        """K, the number of channels (classes, background included)."""
        return int(self.array.shape[0])

    @property
    def background(self) -> np.ndarray:
        """The value outside a crop box, per channel: (K,) one-hot background [1, 0, ...]."""
        fill = np.zeros(self.num_classes, dtype=self.array.dtype)
        fill[0] = 1
        return fill


class RegionProbabilities(Probabilities):
    """Probabilities (K, x, y, z) of K overlapping regions (a sigmoid each, nnU-Net's
    region-based models): no background channel, so padded with 0 in every channel."""

    __slots__ = ()

    @property
    def background(self) -> np.ndarray:
        """The value outside a crop box: (K,) zeros (no region there)."""
        return np.zeros(self.num_classes, dtype=self.array.dtype)


class Logits(_ChannelMaps):
    """Network logits (K, x, y, z), float, before their activation: resampled linearly in
    their own dtype (nnU-Net resamples its float16 logits, then applies softmax or sigmoid).
    Only a crop's inside ever holds logits: they are activated before padding.

    Raises
    ------
    GeometryError : the array is not 4D (K, x, y, z) with K >= 1.
    DataError : the array is not of a floating dtype.
    """

    __slots__ = ()


def label_array(array: Any, what: str = "label map", path: Any = None) -> np.ndarray:
    """``array`` as a 3D (x, y, z) map of non-negative integer labels (0 = background).

    The one check of label values, for label files, predictions and ground truths alike:
    booleans are viewed as uint8; whole-number floats and signed integers become the
    smallest unsigned type that holds them (uint8 up to label 255, as
    :func:`medseg.argmax.label_dtype`); unsigned arrays are kept as they are.

    Raises
    ------
    GeometryError : not 3D. DataError : NaN or infinite values, a non-integer or negative
        label, or a dtype that is not numeric; each message names ``what`` and ``path``.
    """
    from medseg.errors import DataError

    array = np.asarray(array)
    if array.ndim != 3:
        raise GeometryError(f"{what} must be a 3D (x, y, z) label map, got shape {array.shape}",
                            path)
    if array.dtype == bool:
        return array.view(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise DataError(f"{what} holds NaN or infinite values; labels must be integers", path)
        rounded = np.rint(array)
        bad = array != rounded
        if bad.any():
            raise DataError(f"{what} holds non-integer label {array[bad].flat[0].item()!r}; "
                            "labels must be integers", path)
        array = rounded
    elif array.dtype.kind not in "iu":
        raise DataError(f"{what} has dtype {array.dtype}; labels must be integers", path)
    if array.dtype.kind in "if" and array.size and array.min() < 0:  # unsigned: never
        raise DataError(f"{what} holds negative label {array.min().item()!r}; labels must be "
                        "non-negative", path)
    if array.dtype.kind in "fi":
        high = int(array.max()) if array.size else 0
        array = array.astype(np.min_scalar_type(high), copy=False)
    return array
