"""Reorientation: a pure permutation and flip of the voxel axes, with the affine updated.

No interpolation happens: the same voxels are returned in another axis order,
so reorienting and inverting is exact (bit for bit). The orientation transform
is an ``(3, 2)`` array in nibabel's "ornt" convention: row ``i`` says that
input axis ``i`` becomes output axis ``ornt[i, 0]``, flipped when
``ornt[i, 1] == -1``.
"""

from __future__ import annotations

import numpy as np

from medseg.errors import GeometryError
from medseg.volume import Volume

__all__ = ["orientation_transform", "apply_orientation", "invert_orientation", "reorient"]


def orientation_transform(affine: np.ndarray, target: str) -> np.ndarray:
    """The ``(3, 2)`` ornt transform taking an array with ``affine`` to axis codes ``target``.

    Parameters
    ----------
    affine : (4, 4) voxel -> RAS+ mm.
    target : three axis codes such as ``"RAS"`` or ``"LPS"``.
    """
    import nibabel.orientations as nio

    codes = str(target).upper()
    letters = sorted({"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c, -1) for c in codes)
    if len(codes) != 3 or letters != [0, 1, 2]:
        raise GeometryError(
            f"orientation {target!r} is not three axis codes with one of L/R, P/A, I/S each "
            "(e.g. 'RAS' or 'LPS')"
        )
    source = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    return nio.ornt_transform(source, nio.axcodes2ornt(tuple(codes))).astype(np.int64)


def invert_orientation(transform: np.ndarray) -> np.ndarray:
    """The ornt transform undoing ``transform`` (exactly)."""
    transform = np.asarray(transform, dtype=np.int64)
    inverse = np.zeros_like(transform)
    for axis, (new_axis, flip) in enumerate(transform):
        inverse[new_axis] = (axis, flip)
    return inverse


def apply_orientation(volume: Volume, transform: np.ndarray) -> Volume:
    """Permute and flip the spatial axes of ``volume`` as ``transform`` says.

    Works for ``(x, y, z)`` and ``(C, x, y, z)`` arrays; the affine maps the new
    indices to the same world points, and the result has the input's type (a
    LabelMap stays a LabelMap). The returned array always has positive
    strides (``torch.from_numpy`` takes it) but keeps the input's memory order: a
    view when no axis is flipped, else a flipped copy in the same order. Forcing C
    order here cost 1.1 s per Fortran-ordered (NIfTI) 512 x 512 x 300 CT; the
    resampling and intensity steps read any order.
    """
    import nibabel.orientations as nio

    transform = np.asarray(transform, dtype=np.int64)
    if transform.shape != (3, 2):
        raise GeometryError(f"orientation transform must have shape (3, 2), got {transform.shape}")
    array = volume.array
    lead = array.ndim - 3
    flips = [lead + i for i in range(3) if transform[i, 1] == -1]
    if flips:
        array = np.flip(array, axis=flips).copy(order="K")  # K: positive strides, same order
    perm = [0] * 3
    for axis, new_axis in enumerate(transform[:, 0]):
        perm[int(new_axis)] = axis
    array = np.transpose(array, list(range(lead)) + [lead + p for p in perm])
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.spatial_shape)
    return type(volume)(array, affine, volume.meta)


def reorient(volume: Volume, orientation: str = "RAS") -> Volume:
    """``volume`` with its voxel axes permuted/flipped so that its axis codes are ``orientation``.

    For oblique affines each axis is assigned its closest world axis (nibabel
    ``io_orientation``); the affine stays oblique.
    """
    return apply_orientation(volume, orientation_transform(volume.affine, orientation))
