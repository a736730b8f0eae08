"""Benchmark: .nii.gz load and save, medseg vs nibabel, measured in the same run.

A 512 x 512 x 300 int16 CT-like phantom (0.8 x 0.8 x 1.5 mm, 25 HU noise) is
saved and loaded three times by each library, interleaved; the median time is
reported with the ratio medseg / nibabel.

* save: ``nib.save`` (nibabel's default gzip, zlib level 1) vs
  ``medseg.io.write_volume`` (ISA-L level 1, threaded, atomic).
* load: ``np.asanyarray(nib.load(path).dataobj)`` (int16, no float
  conversion) vs ``medseg.io.read_volume``; both read the same nibabel-written
  file, and both must give identical arrays and affines.

Targets: load <= 0.7x and save <= 0.3x nibabel's time. Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_io.py [--shape 512 512 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.data.phantom import make_phantom
from medseg.io import read_volume, write_volume
from medseg.io.gz import WRITE_LEVEL, write_threads

TARGETS = {"load": 0.7, "save": 0.3}


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    t0 = time.perf_counter()
    case = make_phantom(tuple(args.shape), (0.8, 0.8, 1.5), noise_hu=25)
    volume = case.image
    print(f"phantom {volume.shape} {volume.array.dtype} ({volume.array.nbytes / 1e6:.0f} MB) "
          f"made in {time.perf_counter() - t0:.1f} s; cpus available {os.cpu_count()}, "
          f"isal level {WRITE_LEVEL}, {write_threads()} compression threads")
    img = nib.Nifti1Image(volume.array, volume.affine)
    with tempfile.TemporaryDirectory() as tmp:
        nib_path, med_path = Path(tmp) / "nib.nii.gz", Path(tmp) / "medseg.nii.gz"
        times: dict[str, dict[str, float]] = {"save": {}, "load": {}}
        times["save"]["nibabel"], _ = _median_time(lambda: nib.save(img, nib_path), args.repeats)
        times["save"]["medseg"], _ = _median_time(
            lambda: write_volume(volume, med_path), args.repeats)
        times["load"]["nibabel"], ref = _median_time(
            lambda: np.asanyarray(nib.load(nib_path).dataobj), args.repeats)
        times["load"]["medseg"], got = _median_time(lambda: read_volume(nib_path), args.repeats)

        assert ref.dtype == got.array.dtype == np.int16
        assert np.array_equal(ref, volume.array) and np.array_equal(got.array, volume.array)
        assert np.allclose(got.affine, nib.load(nib_path).affine, atol=0, rtol=0)
        back = np.asanyarray(nib.load(med_path).dataobj)
        assert np.array_equal(back, volume.array), "medseg-written file differs"
        sizes = {name: p.stat().st_size / 1e6 for name, p in
                 (("nibabel", nib_path), ("medseg", med_path))}
    print("data verified equal (nibabel and medseg reads, both files)")
    print(f"file size: nibabel {sizes['nibabel']:.1f} MB, medseg {sizes['medseg']:.1f} MB")
    ok = True
    for op in ("load", "save"):
        ratio = times[op]["medseg"] / times[op]["nibabel"]
        passed = ratio <= TARGETS[op]
        ok &= passed
        print(f"{op}: nibabel {times[op]['nibabel']:.3f} s, medseg {times[op]['medseg']:.3f} s, "
              f"ratio medseg/nibabel {ratio:.2f} (target <= {TARGETS[op]}) "
              f"{'OK' if passed else 'MISSED'}  [median of {args.repeats}]")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
