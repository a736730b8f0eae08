"""Grid arithmetic of resampling, in NumPy: the grid of a spacing, and the per-axis index map.

Shared by medseg's torch resampling engine (:mod:`medseg.transforms.resample`) and the
torch-free runner of ``medseg export`` (:mod:`medseg.export`), which copies this module,
so that both place the same grid and sample the same source positions.
Shapes are voxels (x, y, z); affines map voxel indices to RAS+ mm; spacing is in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.errors import GeometryError, UsageError

__all__ = ["grid_for_spacing", "index_map", "triple"]

_TOL = 1e-6  # relative tolerance under which a scale counts as exactly 1


def grid_for_spacing(
    shape: Sequence[int], affine: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the grid with voxel size ``spacing_mm`` covering the same field of view.

    Parameters
    ----------
    shape : (x, y, z) voxels of the source grid.
    affine : (4, 4) source voxel -> RAS+ mm.
    spacing_mm : (x, y, z) target voxel size in mm (in the array's axis order).

    Returns
    -------
    (shape, affine) of the target grid; same axis directions, same world centre.
    Axes whose spacing already matches (relative 1e-6) keep their affine column
    bit for bit.
    """
    spacing = triple(spacing_mm, "spacing_mm", float)
    if min(spacing) <= 0:
        raise UsageError(f"spacing_mm must be three positive sizes in mm, got {list(spacing_mm)}")
    affine = np.asarray(affine, dtype=np.float64)
    old = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    scale = np.asarray(spacing) / old
    scale[np.abs(scale - 1.0) < _TOL] = 1.0
    n_old = np.asarray(shape, dtype=np.float64)
    n_new = np.maximum(1, np.floor(n_old / scale + 0.5)).astype(np.int64)
    n_new[scale == 1.0] = n_old[scale == 1.0]
    new = affine.copy()
    new[:3, :3] = affine[:3, :3] * scale[None, :]
    centre = affine[:3, :3] @ ((n_old - 1) / 2.0) + affine[:3, 3]
    new[:3, 3] = centre - new[:3, :3] @ ((n_new - 1) / 2.0)
    if np.all(scale == 1.0):
        new[:3, 3] = affine[:3, 3]
    return tuple(int(n) for n in n_new), new  # type: ignore[return-value]


def index_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-axis (scale, offset) with src_index = scale * dst_index + offset."""
    m = np.linalg.solve(np.asarray(src_affine, dtype=np.float64), dst_affine)
    diag = np.diag(m[:3, :3])
    off_diag = m[:3, :3] - np.diag(diag)
    if np.abs(off_diag).max() > _TOL * max(1.0, np.abs(diag).max()):
        raise GeometryError(
            "target grid is rotated or permuted relative to the source grid; resample_to_grid "
            "only changes spacing and origin (reorient both volumes to the same orientation "
            "first)"
        )
    scale = [1.0 if abs(d - 1.0) < _TOL else float(d) for d in diag]
    offset = [0.0 if abs(o) < _TOL else float(o) for o in m[:3, 3]]
    return scale, offset


def triple(values, name: str, kind: type) -> tuple:
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise UsageError(f"{name} must be three numbers (x, y, z), got {values!r}")
    return out
