"""Helpers of the DICOM label tests: the shared real data, labels on a series grid, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medseg.volume import LabelMap, Volume

# tests/io/dicom/dicom_label_helpers.py -> parents[3] is the repository; ../shared beside it.
SHARED = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
SAMPLES = SHARED / "dicom_samples"
TOTALSEG = SHARED / "totalsegmentator"


def shared(path: Path) -> Path:
    """``path`` under ../shared/data, or skip the test with the reason."""
    if not path.exists():
        pytest.skip(f"real test data {path} not found (../shared is absent)")
    return path


def labels_on_series(labels: Volume, series: Volume) -> LabelMap:
    """``labels`` moved (not rotated) so that its centre is the series' centre, then sampled
    by nearest neighbour at every series voxel centre: real anatomy on the series' grid."""
    def centre(vol: Volume) -> np.ndarray:
        return vol.affine[:3, :3] @ ((np.asarray(vol.spatial_shape) - 1) / 2) + vol.affine[:3, 3]

    shift = centre(labels) - centre(series)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in series.spatial_shape], indexing="ij"), -1)
    world = ijk @ series.affine[:3, :3].T + series.affine[:3, 3] + shift
    inverse = np.linalg.inv(labels.affine)
    src = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.asarray(labels.spatial_shape)), axis=-1)
    out = np.zeros(series.spatial_shape, dtype=np.uint8)
    s = src[inside]
    out[inside] = np.asarray(labels.array)[s[:, 0], s[:, 1], s[:, 2]]
    return LabelMap(out, series.affine)


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy (dicom3tools) reports for ``path``; skip where it is absent."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def copy_with_instance_uids(folder: Path, dest: Path) -> Path:
    """Copy the slices of ``folder`` into ``dest`` with SOP Class / Instance UID filled from
    the file meta where the (anonymised) dataset has them blank, as readers that match
    contours to slices by SOP Instance UID (rt-utils) need; pixels are copied untouched."""
    import pydicom

    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if not str(ds.get("SOPInstanceUID", "")):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        if not str(ds.get("SOPClassUID", "")):
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(dest / path.name)
    return dest
