"""``Volume``: a voxel array with the affine that places it in RAS+ world space.

Conventions (see DESIGN.md):

* ``array`` is indexed ``(x, y, z)`` for a single-channel image, or
  ``(C, x, y, z)`` when it has channels (channel first);
* ``affine`` is a 4x4 float64 matrix mapping voxel indices ``(i, j, k, 1)`` to
  RAS+ world coordinates in millimetres (nibabel convention);
* ``spacing_mm`` is derived from the affine, in the array's axis order.

Geometry-changing helpers return a new Volume; nothing mutates geometry in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import GeometryError

__all__ = ["Volume", "orientation_of", "affine_from"]

_AXIS_CODES = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}


def orientation_of(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``"RAS"`` or ``"LPS"`` (the direction each axis points to).

    Each voxel axis is assigned the world axis it is closest to (nibabel's
    ``aff2axcodes`` rule); the letter names the direction of increasing index.
    """
    import nibabel.orientations as nio

    return "".join(nio.aff2axcodes(np.asarray(affine, dtype=np.float64)))


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
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise GeometryError("affine is singular (zero spacing or collinear axes)")
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
        """A new Volume on the same grid holding ``array`` (same spatial shape)."""
        array = np.asarray(array)
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise GeometryError(
                f"array of spatial shape {tuple(array.shape[-3:])} does not fit a grid of "
                f"shape {self.spatial_shape}"
            )
        return Volume(array, self.affine, self.meta if meta is None else meta)

    def crop(self, start: Sequence[int], stop: Sequence[int]) -> Volume:
        """Sub-volume ``[start, stop)`` in voxels; the affine moves its origin accordingly."""
        start = [int(s) for s in start]
        stop = [int(s) for s in stop]
        index = (Ellipsis,) + tuple(slice(a, b) for a, b in zip(start, stop))
        affine = self.affine.copy()
        affine[:3, 3] = self.world_coords(start)
        return Volume(self.array[index], affine, self.meta)

    def same_grid(self, other: Volume, tol_mm: float = 1e-3) -> bool:
        """True when ``other`` has the same spatial shape and an affine within ``tol_mm``."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=tol_mm, rtol=0)
        )

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.4g}" for s in self.spacing_mm)
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing_mm=({sp}), "
            f"orientation={self.orientation!r})"
        )

    def __array__(self, dtype=None, copy=None):  # noqa: D105 - numpy protocol
        return self.array if dtype is None else self.array.astype(dtype)
