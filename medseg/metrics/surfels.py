"""Area-weighted surface elements ("surfels") of a binary mask, marching-cubes style.

Used by the ``"deepmind"`` convention (DeepMind's surface-distance package): the
surface of a mask is made of the 2x2x2 voxel cubes whose eight corners are not
all equal; each cube carries the area (mm^2) of the marching-cubes triangles
that cut it, with triangle vertices at the midpoints of the cube edges.

The area of each of the 256 cube configurations is derived here, not copied:
for every configuration we cut the cube's faces (a face with two diagonal
inside corners keeps them apart, and a configuration with more than four
inside corners is cut like its complement), chain the cut segments into
polygons, and triangulate each polygon the way that maximises its area at unit
spacing (ties broken at a slightly anisotropic spacing, so the choice does not
depend on the spacing). Per-triangle area vectors are kept, so the areas can
then be scaled to any anisotropic ``spacing_mm`` exactly. The resulting table
equals surface-distance's ``create_table_neighbour_code_to_surface_area`` at
any spacing (checked in ``tests/metrics/test_surfels.py``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["CUBE_KERNEL", "surfel_area_table", "neighbour_codes"]

#: Bit weight of each corner of the 2x2x2 neighbourhood, indexed (x, y, z).
CUBE_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)

_Point = tuple[float, float, float]
_CORNERS = list(itertools.product((0, 1), repeat=3))
_TIE_PROBE_SPACING = (1.0, 1.0, 1.001)


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit code of every 2x2x2 cube of ``mask`` (one cube per voxel index).

    The code at index ``(i, j, k)`` describes the cube with corners
    ``(i-1..i, j-1..j, k-1..k)``, corner ``(i-1+a, j-1+b, k-1+c)`` carrying bit
    ``CUBE_KERNEL[a, b, c]``; outside the array counts as background.

    Parameters
    ----------
    mask : (x, y, z) bool array, padded so that no surface touches its last
        plane along any axis.

    Returns
    -------
    (x, y, z) uint8 array of cube codes (0 and 255: not on the surface).
    """
    nx, ny, nz = mask.shape
    padded = np.pad(mask.astype(np.uint8), ((1, 0), (1, 0), (1, 0)))
    codes = np.zeros(mask.shape, np.uint8)
    for (a, b, c), weight in np.ndenumerate(CUBE_KERNEL):
        codes |= padded[a : a + nx, b : b + ny, c : c + nz] * np.uint8(weight)
    return codes


@functools.lru_cache(maxsize=32)
def surfel_area_table(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Surface area in mm^2 of each of the 256 cube codes at ``spacing_mm`` (x, y, z)."""
    sx, sy, sz = (float(s) for s in spacing_mm)
    scale = np.array([sy * sz, sx * sz, sx * sy])
    table = np.zeros(256)
    for code, vectors in enumerate(_area_vectors()):
        if len(vectors):
            table[code] = float(np.sum(np.linalg.norm(vectors * scale, axis=1)))
    return table


@functools.lru_cache(maxsize=1)
def _area_vectors() -> tuple[np.ndarray, ...]:
    """Per code, the (n, 3) area vectors (unit spacing) of its chosen triangles."""
    return tuple(_code_area_vectors(code) for code in range(256))


def _code_area_vectors(code: int) -> np.ndarray:
    inside = {c for c in _CORNERS if code & int(CUBE_KERNEL[c])}
    if len(inside) > 4:
        inside = set(_CORNERS) - inside
    best: tuple[tuple[float, float], np.ndarray] | None = None
    options = [list(_triangulations(p)) for p in _polygons(inside)]
    for combo in itertools.product(*options):
        vectors = np.array([_area_vector(*t) for tris in combo for t in tris]).reshape(-1, 3)
        score = (_area(vectors, (1.0, 1.0, 1.0)), _area(vectors, _TIE_PROBE_SPACING))
        if best is None or score > best[0]:
            best = (score, vectors)
    return np.zeros((0, 3)) if best is None else best[1]


def _area(vectors: np.ndarray, spacing: Sequence[float]) -> float:
    sx, sy, sz = spacing
    scale = np.array([sy * sz, sx * sz, sx * sy])
    return round(float(np.sum(np.linalg.norm(vectors * scale, axis=1))), 9)


def _area_vector(a: _Point, b: _Point, c: _Point) -> np.ndarray:
    pa, pb, pc = np.asarray(a), np.asarray(b), np.asarray(c)
    return np.cross(pb - pa, pc - pa) / 2.0


def _faces() -> Iterator[list[tuple[int, int, int]]]:
    """The six cube faces, each as its four corners in cyclic order."""
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (0, 1):
            cycle = []
            for p, q in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corner = [0, 0, 0]
                corner[axis], corner[others[0]], corner[others[1]] = value, p, q
                cycle.append(tuple(corner))
            yield cycle


def _midpoint(a: tuple[int, ...], b: tuple[int, ...]) -> _Point:
    return tuple((x + y) / 2.0 for x, y in zip(a, b))  # type: ignore[return-value]


def _face_segments(inside: set) -> list[tuple[_Point, _Point]]:
    segments = []
    for cycle in _faces():
        flags = [c in inside for c in cycle]
        cut = [(cycle[i], cycle[(i + 1) % 4]) for i in range(4) if flags[i] != flags[(i + 1) % 4]]
        if len(cut) == 2:
            segments.append((_midpoint(*cut[0]), _midpoint(*cut[1])))
        elif len(cut) == 4:  # two diagonal inside corners: cut each one off on its own
            for i in range(4):
                if flags[i]:
                    segments.append(
                        (_midpoint(cycle[i - 1], cycle[i]), _midpoint(cycle[i], cycle[(i + 1) % 4]))
                    )
    return segments


def _polygons(inside: set) -> list[list[_Point]]:
    """Closed polygons (vertex lists) formed by chaining the face segments."""
    segments = _face_segments(inside)
    polygons = []
    while segments:
        start, end = segments.pop()
        chain = [start, end]
        while chain[-1] != chain[0]:
            for i, (p, q) in enumerate(segments):
                if chain[-1] in (p, q):
                    chain.append(q if p == chain[-1] else p)
                    segments.pop(i)
                    break
        polygons.append(chain[:-1])
    return polygons


def _triangulations(polygon: list[_Point]) -> Iterator[list[tuple[_Point, _Point, _Point]]]:
    """Every triangulation of a polygon by non-crossing diagonals."""
    n = len(polygon)
    if n < 3:
        yield []
        return
    for k in range(1, n - 1):
        left = list(_triangulations(polygon[: k + 1])) if k >= 2 else [[]]
        right = list(_triangulations(polygon[k:])) if n - 1 - k >= 2 else [[]]
        for lt, rt in itertools.product(left, right):
            yield lt + rt + [(polygon[0], polygon[k], polygon[-1])]
