"""Geometry of a stack of DICOM slices (or frames): order, spacing checks, gantry tilt.

Each slice k has ImagePositionPatient ``p_k`` (LPS mm, its first voxel) and the
stack one ImageOrientationPatient: row direction ``r`` (along x, the column
index), column direction ``c`` (along y) and the slice normal ``n = r x c``.
Slices are ordered by ``p_k . n``; a missing slice, duplicated positions or
uneven gaps are errors.

**Gantry tilt.** A tilted CT keeps each slice perpendicular to ``n`` but moves
the table along the body axis, so the step between slices ``p_{k+1} - p_k`` has
a constant part ``s`` within the slice plane. Read as if straight, every slice
would be displaced by ``k s``. :func:`plan_stack` detects ``s`` and
:func:`untilt` resamples each slice in its own plane onto the orthogonal grid
``p_0 + i dx r + j dy c + k dz n`` (``dz`` the gap along ``n``): output voxel
(i, j, k) takes input slice k at (i - k s.r / dx, j - k s.c / dy), linearly
interpolated; voxels that come from outside the slice get the image minimum.
Nothing is interpolated across slices, and the grid keeps the input's size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from medseg.errors import GeometryError
from medseg.io.lps import LPS_TO_RAS

__all__ = ["SPACING_RTOL", "SPACING_ATOL_MM", "DRIFT_ATOL_MM", "Stack", "plan_stack", "untilt"]

log = logging.getLogger(__name__)

#: A gap between neighbouring slices may differ from the median gap by this
#: fraction of it, plus :data:`SPACING_ATOL_MM`, before the series is rejected.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
#: In-plane drift of the slice positions (mm) below which a stack counts as straight.
DRIFT_ATOL_MM = 0.1


@dataclass(frozen=True)
class Stack:
    """Where a stack's slices go.

    Attributes
    ----------
    order : indices of the slices in increasing position along the normal.
    affine : (4, 4) voxel -> RAS+ mm of the output grid (orthogonal).
    shift_vox : in-plane shift (x, y) in voxels per slice; (0, 0) when straight.
    tilt_deg : angle between the slice step and the slice normal (degrees).
    """

    order: np.ndarray
    affine: np.ndarray
    shift_vox: tuple[float, float] = (0.0, 0.0)
    tilt_deg: float = 0.0

    @property
    def tilted(self) -> bool:
        """True when :func:`untilt` must resample the slices."""
        return self.shift_vox != (0.0, 0.0)


def plan_stack(
    source: str | os.PathLike,
    orientations: np.ndarray,
    positions: np.ndarray,
    pixel_spacing_mm: tuple[float, float],
    *,
    tilt: bool = True,
    single_step_mm: float = 1.0,
) -> Stack:
    """Order the slices of a stack and give its output grid.

    Parameters
    ----------
    source : the folder or file named in errors and warnings.
    orientations : (N, 6) ImageOrientationPatient of each slice (LPS).
    positions : (N, 3) ImagePositionPatient of each slice (LPS mm).
    pixel_spacing_mm : PixelSpacing (between rows, between columns), mm.
    tilt : resample a gantry-tilted stack with a warning (True) or refuse it (False).
    single_step_mm : slice spacing used when there is a single slice.

    Raises
    ------
    GeometryError
        different orientations, duplicated positions, uneven gaps (missing
        slices), an irregular in-plane drift, or a tilt when ``tilt`` is False.
    """
    orientation = _one_orientation(source, orientations)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    along = positions @ normal
    if len(order) == 1:
        dz, in_plane = single_step_mm, np.zeros(3)
    else:
        _check_gaps(source, along)
        dz = float(along[-1] - along[0]) / (len(order) - 1)
        in_plane = _in_plane_step(source, positions, normal)
    dx, dy = float(pixel_spacing_mm[1]), float(pixel_spacing_mm[0])
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.stack([row * dx, col * dy, normal * dz], axis=1)
    affine_lps[:3, 3] = positions[0]
    stack = Stack(order, LPS_TO_RAS @ affine_lps)
    if np.linalg.norm(in_plane) <= DRIFT_ATOL_MM:
        return stack
    return _tilted(source, stack, in_plane, (row, col, dx, dy, dz), tilt)


def _tilted(source, stack: Stack, in_plane: np.ndarray, frame: tuple, tilt: bool) -> Stack:
    row, col, dx, dy, dz = frame
    degrees = float(np.degrees(np.arctan2(np.linalg.norm(in_plane), abs(dz))))
    moved = f"slices move {np.linalg.norm(in_plane):.3g} mm per slice within their plane"
    if not tilt:
        raise GeometryError(
            f"gantry-tilted stack ({degrees:.3g} degrees: {moved}); refused because tilt=False "
            "(--no-tilt); read it without that option to resample it onto an orthogonal grid",
            source,
        )
    log.warning("%s: gantry tilt of %.3g degrees (%s): resampled onto an orthogonal grid",
                source, degrees, moved)
    shift = (float(in_plane @ row) / dx, float(in_plane @ col) / dy)
    return Stack(stack.order, stack.affine, shift, degrees)


def untilt(array: np.ndarray, stack: Stack) -> np.ndarray:
    """Resample a tilted stack's (x, y, z) array onto its orthogonal grid (see module notes).

    Integer images are rounded back to their dtype (linear interpolation stays
    within their range).
    """
    if not stack.tilted:
        return array
    from scipy import ndimage

    fill = float(array.min())
    out = np.empty(array.shape, dtype=np.float64)
    for k in range(array.shape[2]):
        shift = (k * stack.shift_vox[0], k * stack.shift_vox[1])
        out[:, :, k] = ndimage.shift(array[:, :, k].astype(np.float64), shift, order=1,
                                     mode="constant", cval=fill)
    if array.dtype.kind in "iu":
        return np.rint(out).astype(array.dtype)
    return out.astype(array.dtype)


def _one_orientation(source: str | os.PathLike, orientations: np.ndarray) -> np.ndarray:
    bad = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > 1e-4)
    if bad.size:
        raise GeometryError(
            f"slices have different ImageOrientationPatient (slice {int(bad[0])}); the stack "
            "mixes orientations",
            source,
        )
    return orientations[0].astype(np.float64)


def _in_plane_step(source, positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The constant in-plane part of the slice step (mm, LPS); error if it is not constant."""
    steps = np.diff(positions, axis=0)
    in_plane = steps - np.outer(steps @ normal, normal)
    mean = in_plane.mean(axis=0)
    worst = float(np.sqrt(((in_plane - mean) ** 2).sum(axis=1)).max())
    if worst > DRIFT_ATOL_MM:
        raise GeometryError(
            f"slice positions drift irregularly within the slice plane (up to {worst:.3g} mm "
            "from a constant gantry tilt; sheared stack); not supported",
            source,
        )
    return mean


def _check_gaps(source: str | os.PathLike, along: np.ndarray) -> None:
    """Raise if the sorted slice positions ``along`` (mm) are not evenly spaced."""
    gaps = np.diff(along)
    median = float(np.median(gaps))
    if median <= SPACING_ATOL_MM or np.min(gaps) <= SPACING_ATOL_MM:
        raise GeometryError(
            f"slices share a position (duplicated slices or several stacks; positions "
            f"{_fmt(along)} mm along the normal)",
            source,
        )
    off = np.flatnonzero(np.abs(gaps - median) > SPACING_RTOL * median + SPACING_ATOL_MM)
    if off.size:
        k = int(off[0])
        missing = round(gaps[k] / median) - 1
        hint = f" ({missing} slice(s) missing?)" if missing >= 1 else ""
        raise GeometryError(
            f"uneven slice spacing: gap of {gaps[k]:.4g} mm between slice positions "
            f"{along[k]:.4g} and {along[k + 1]:.4g} mm, median gap {median:.4g} mm{hint}; "
            f"{off.size} of {gaps.size} gaps differ",
            source,
        )


def _fmt(values: np.ndarray, n: int = 6) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"
