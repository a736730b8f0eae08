"""Display planes: reorient to RAS and cut axial, coronal and sagittal slices.

Slices are shown in the **radiological convention**:

* axial: seen from the feet; patient right on the viewer's left, anterior up;
* coronal: seen from the front; patient right on the viewer's left, superior up;
* sagittal: seen from the patient's left; anterior on the viewer's left, superior up.

Arrays are first reoriented to the closest RAS+ axes by flipping and permuting
axes (nibabel's ``io_orientation``); oblique volumes are shown on their
nearest canonical axes, without resampling. Each slice carries its extent in
millimetres so that it is drawn with its physical aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.volume import Volume

__all__ = ["RasGrid", "Plane", "to_ras", "cut_planes"]


@dataclass(frozen=True)
class RasGrid:
    """Arrays reoriented to RAS+ on a common grid, with spacing and affine in that order."""

    arrays: dict[str, np.ndarray]
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.arrays.values())).shape  # type: ignore[return-value]


@dataclass(frozen=True)
class Plane:
    """One display slice of each array; rows top to bottom, columns left to right."""

    name: str  # "axial", "coronal" or "sagittal"
    slices: dict[str, np.ndarray]
    pixel_mm: tuple[float, float]  # (row, column) size in mm
    edges: tuple[str, str, str, str]  # patient direction at the left, right, top, bottom
    position: str  # e.g. "S 94.3 mm": the world coordinate of the plane
    marker_mm: tuple[float, float]  # (column, row) of the centre voxel, in mm from top-left

    @property
    def size_mm(self) -> tuple[float, float]:
        """(width, height) in mm."""
        rows, cols = next(iter(self.slices.values())).shape
        return cols * self.pixel_mm[1], rows * self.pixel_mm[0]


def to_ras(volumes: dict[str, Volume]) -> RasGrid:
    """Reorient 3D volumes sharing one grid to RAS+ axes (flips and permutations only)."""
    import nibabel.orientations as nio

    first = next(iter(volumes.values()))
    ornt = nio.io_orientation(first.affine)
    transform = nio.ornt_transform(ornt, nio.axcodes2ornt("RAS"))
    arrays = {key: nio.apply_orientation(vol.array, transform) for key, vol in volumes.items()}
    affine = first.affine @ nio.inv_ornt_aff(transform, first.spatial_shape)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return RasGrid(arrays, spacing, affine)  # type: ignore[arg-type]


def cut_planes(grid: RasGrid, centre: tuple[int, int, int]) -> list[Plane]:
    """Axial, coronal and sagittal planes of every array in ``grid`` through voxel ``centre``."""
    x, y, z = (int(c) for c in centre)
    sx, sy, sz = grid.spacing_mm
    nx, ny, nz = grid.shape
    world = grid.affine[:3, :3] @ np.array([x, y, z], dtype=float) + grid.affine[:3, 3]
    specs = (
        ("axial", np.s_[:, :, z], (sy, sx), ("R", "L", "A", "P"), f"S {world[2]:.1f} mm",
         (nx - 1 - x, ny - 1 - y)),
        ("coronal", np.s_[:, y, :], (sz, sx), ("R", "L", "S", "I"), f"A {world[1]:.1f} mm",
         (nx - 1 - x, nz - 1 - z)),
        ("sagittal", np.s_[x, :, :], (sz, sy), ("A", "P", "S", "I"), f"R {world[0]:.1f} mm",
         (ny - 1 - y, nz - 1 - z)),
    )
    planes = []
    for name, index, pixel_mm, edges, position, (col, row) in specs:
        slices = {key: _display(arr[index]) for key, arr in grid.arrays.items()}
        marker = ((col + 0.5) * pixel_mm[1], (row + 0.5) * pixel_mm[0])
        planes.append(Plane(name, slices, pixel_mm, edges, position, marker))
    return planes


def _display(section: np.ndarray) -> np.ndarray:
    """A 2D section (first axis -> screen left, second -> screen top, both reversed).

    For RAS arrays every plane has this form: the first remaining axis points
    to R or A, which the radiological convention puts on the viewer's left, and
    the second to A or S, which goes up.
    """
    return np.ascontiguousarray(section[::-1, ::-1].T)
