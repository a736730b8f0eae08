"""Fast conversion of (x, y, z) arrays to Fortran (x-fastest) memory order.

NIfTI stores voxels x-fastest, and ITK's (z, y, x) C-order buffer is the same
layout. An array made by NumPy or PyTorch is usually C-ordered, z-fastest.
Transposing it slice by slice (what nibabel does while writing) reads one
int16 from every cache line per slice; on a 512 x 512 x 300 CT that takes
2-4 s, longer than the ISA-L compression itself. Copying in small 3D tiles
that fit the L2 cache reads every cache line once: 5-8x faster.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_fortran", "TILE"]

#: Tile (x, y, z) in voxels: 256 x 8 x 64 int16 = 256 kB, measured fastest of
#: (512|256|128|64|32) x (64|32|16|8) x (64|32) on a 512 x 512 x 300 volume.
TILE = (256, 8, 64)


def as_fortran(array: np.ndarray) -> np.ndarray:
    """``array`` in Fortran order (the same values), copying in cache-sized tiles.

    Parameters
    ----------
    array : (x, y, z) or (x, y, z, C) array.

    Returns
    -------
    The array itself when already Fortran-contiguous, else a Fortran-ordered copy.
    """
    if array.flags.f_contiguous:
        return array
    out = np.empty(array.shape, dtype=array.dtype, order="F")
    if array.ndim == 4:
        for c in range(array.shape[3]):
            _copy_tiled(array[..., c], out[..., c])
    elif array.ndim == 3:
        _copy_tiled(array, out)
    else:
        out[...] = array
    return out


def _copy_tiled(src: np.ndarray, dst: np.ndarray) -> None:
    tx, ty, tz = TILE
    nx, ny, nz = src.shape
    for z0 in range(0, nz, tz):
        for y0 in range(0, ny, ty):
            for x0 in range(0, nx, tx):
                block = (slice(x0, x0 + tx), slice(y0, y0 + ty), slice(z0, z0 + tz))
                dst[block] = src[block]
