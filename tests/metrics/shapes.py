"""Small seeded test masks: blobs, ellipsoids, one-voxel and thin structures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SHAPE = (40, 40, 40)


def ellipsoid(centre, radii, shape=SHAPE) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def blob(seed: int, shape=SHAPE, threshold: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    field /= field.std()
    return field > threshold


def one_voxel(index=(20, 20, 20), shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[index] = True
    return mask


def thin_plate(x: int, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[x, 5:35, 8:30] = True
    return mask


def line(shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[10:30, 20, 21] = True
    return mask


PAIRS = {
    "blobs": lambda: (blob(1), blob(2)),
    "ellipsoids": lambda: (ellipsoid((20, 19, 21), (12, 9, 6)), ellipsoid((21, 20, 20), (10, 10, 7))),
    "one_voxel": lambda: (one_voxel(), one_voxel((22, 19, 25))),
    "one_voxel_vs_blob": lambda: (one_voxel(), ellipsoid((20, 20, 20), (5, 6, 4))),
    "thin": lambda: (thin_plate(19), thin_plate(21) | line()),
    "at_border": lambda: (ellipsoid((0, 20, 39), (8, 9, 10)), ellipsoid((2, 20, 37), (9, 8, 10))),
}
