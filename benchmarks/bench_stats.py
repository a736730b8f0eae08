"""Benchmark: per-structure statistics, medseg.stats vs a per-label numpy loop, same run.

The case: a 512 x 512 x 600 int16 CT-like image (0.8 x 0.8 x 1.0 mm) with a
117-label segmentation (TotalSegmentator's "total" task has 117 labels). The
label map is generated: a coarse 32 x 32 x 38 grid of 16-voxel cubes, the
cubes inside an ellipsoidal "body" (about 40 % of the volume) get a random
label 1..117 (seeded), the others 0, upsampled by repetition to full size and
cropped to 600 slices; the image is seeded uniform noise in [-200, 300) HU
inside the body and -1000 outside.

* medseg: :func:`medseg.stats.structure_stats` (one pass: the foreground voxels
  grouped by one stable sort of their labels);
* peer: the obvious loop, for each label ``mask = seg == k``, ``image[mask]``,
  ``np.percentile``, ``np.nonzero(mask)`` for the centroid and the extent.

Both must give the same rows (to 1e-9 relative); the ratio peer / medseg is
printed. Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_stats.py [--shape 512 512 600] [--labels 117]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from medseg.stats import structure_stats
from medseg.volume import Volume

SPACING = (0.8, 0.8, 1.0)
CELL = 16  # voxels per side of one label cube


def make_case(shape: tuple[int, int, int], n_labels: int, seed: int = 0) -> tuple[Volume, Volume]:
    """(image, segmentation) of the benchmark, generated as the module docstring says."""
    rng = np.random.default_rng(seed)
    coarse_shape = tuple(math.ceil(n / CELL) for n in shape)
    grid = np.ogrid[tuple(slice(0, n) for n in coarse_shape)]
    body = sum(((g + 0.5) / n - 0.5) ** 2 / 0.25 for g, n in zip(grid, coarse_shape)) <= 0.8
    coarse = np.where(body, rng.integers(1, n_labels + 1, coarse_shape), 0).astype(np.uint8)
    seg = coarse
    for axis in range(3):
        seg = np.repeat(seg, CELL, axis=axis)
    seg = np.ascontiguousarray(seg[: shape[0], : shape[1], : shape[2]])
    body_full = np.repeat(np.repeat(np.repeat(body, CELL, 0), CELL, 1), CELL, 2)
    body_full = body_full[: shape[0], : shape[1], : shape[2]]
    image = rng.integers(-200, 300, shape, dtype=np.int16)
    image[~body_full] = -1000
    affine = np.diag(SPACING + (1.0,))
    return Volume(image, affine), Volume(seg, affine)


def per_label_loop(image: Volume, seg: Volume) -> list[dict[str, float]]:
    """The peer: one full pass over the volume (a mask) per label."""
    rows = []
    spacing = np.array(seg.spacing_mm)
    for label in (int(v) for v in np.unique(seg.array) if v):
        mask = seg.array == label
        values = image.array[mask].astype(np.float64)
        ijk = np.stack(np.nonzero(mask), axis=1)
        p5, median, p95 = np.percentile(values, (5, 50, 95))
        centroid = seg.world_coords(ijk.mean(axis=0))
        extent = (ijk.max(axis=0) - ijk.min(axis=0) + 1) * spacing  # axis-aligned grid
        rows.append({
            "label": label, "voxels": int(mask.sum()), "mean": values.mean(), "std": values.std(),
            "median": median, "p5": p5, "p95": p95, "min": values.min(), "max": values.max(),
            **dict(zip(("centroid_r_mm", "centroid_a_mm", "centroid_s_mm"), centroid)),
            **dict(zip(("extent_r_mm", "extent_a_mm", "extent_s_mm"), extent)),
        })
    return rows


def check_same(ours: list[dict], peer: list[dict]) -> None:
    if [r["label"] for r in ours] != [r["label"] for r in peer]:
        raise SystemExit("label lists differ")
    for mine, theirs in zip(ours, peer):
        for key, value in theirs.items():
            if not math.isclose(mine[key], value, rel_tol=1e-9, abs_tol=1e-9):
                raise SystemExit(f"label {mine['label']} {key}: medseg {mine[key]} peer {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 600))
    parser.add_argument("--labels", type=int, default=117)
    parser.add_argument("--repeats", type=int, default=3, help="medseg runs (median); peer: 1")
    args = parser.parse_args()

    t0 = time.perf_counter()
    image, seg = make_case(tuple(args.shape), args.labels)
    foreground = np.count_nonzero(seg.array) / seg.array.size
    print(f"case {seg.shape}, {len(np.unique(seg.array)) - 1} labels, foreground "
          f"{foreground:.0%}, made in {time.perf_counter() - t0:.1f} s")
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = structure_stats(image, seg)
        times.append(time.perf_counter() - t0)
    ours_s = float(np.median(times))
    t0 = time.perf_counter()
    peer = per_label_loop(image, seg)
    peer_s = time.perf_counter() - t0
    check_same(ours, peer)
    print(f"medseg.stats.structure_stats: {ours_s:7.2f} s (median of {args.repeats})")
    print(f"per-label numpy loop:         {peer_s:7.2f} s")
    print(f"ratio peer / medseg: {peer_s / ours_s:.1f}x (same rows to 1e-9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
