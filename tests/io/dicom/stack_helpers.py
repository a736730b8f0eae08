"""Helpers for the stack tests: dcm2niix as the oracle, grids compared in physical space."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

# <repo>/../shared/data/dicom_qa_enh; tests/io/dicom/stack_helpers.py -> parents[3] is the repo.
QA_ENH = Path(__file__).resolve().parents[3] / "../shared/data/dicom_qa_enh"
#: nibabel's own test data: real Siemens mosaic headers (CSA included), pixels blanked.
NIBABEL_DWI = Path(nib.__file__).parent / "nicom/tests/data/siemens_dwi_0.dcm.gz"


def qa_enh(name: str) -> Path:
    """A path inside the shared dcm2niix QA subset; skips the test when it is absent."""
    path = (QA_ENH / name).resolve()
    if not path.exists():
        pytest.skip(f"dcm2niix QA data {name} not found in {QA_ENH.resolve()} (../shared absent)")
    return path


def dcm2niix() -> str:
    """The dcm2niix executable (the pip package's, beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "dcm2niix"
    found = str(beside) if beside.exists() else shutil.which("dcm2niix")
    if found is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix; in the test extra)")
    return found


def run_dcm2niix(folder: Path, out: Path) -> list[Path]:
    """dcm2niix's NIfTI files for the DICOM files in ``folder`` (uncompressed, no sidecars)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcm2niix(), "-z", "n", "-b", "n", "-f", "%f_%s", "-o", str(out), str(folder)],
                   check=True, capture_output=True)
    return sorted(out.glob("*.nii"))


def nibabel_mosaic(b_value: int = 0) -> pydicom.Dataset:
    """nibabel's Siemens DWI mosaic (896 x 896 frame, 48 tiles of 128 x 128) of b-value 0
    or 1000 s/mm^2 (its CSA header's B_value), as a dataset."""
    path = NIBABEL_DWI.with_name(f"siemens_dwi_{b_value}.dcm.gz")
    if not path.exists():
        pytest.skip(f"nibabel's test mosaic {path} is not installed")
    return pydicom.dcmread(io.BytesIO(gzip.open(path).read()))


def on_reference_grid(affine: np.ndarray, array: np.ndarray, ref: nib.Nifti1Image,
                      tol_mm: float = 0.01) -> np.ndarray:
    """``array`` (x, y, z) on ``affine`` re-indexed onto ``ref``'s grid, checking that every
    voxel centre of one grid is a voxel centre of the other within ``tol_mm``.

    The two grids must differ by axis flips and permutations only (as a reorientation
    does); anything else fails the test.
    """
    shape = np.array(array.shape[:3])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    index = index.reshape(-1, 3).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    in_ref = (world - ref.affine[:3, 3]) @ np.linalg.inv(ref.affine[:3, :3]).T
    rounded = np.rint(in_ref)
    back = rounded @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    assert np.abs(back - world).max() < tol_mm, "voxel centres are not on the reference grid"
    rounded = rounded.astype(int)
    assert (rounded >= 0).all() and (rounded < np.array(ref.shape[:3])).all()
    out = np.zeros(ref.shape[:3], dtype=array.dtype)
    out[tuple(rounded.T)] = array.reshape(-1)  # index runs in C order over array
    assert np.prod(ref.shape[:3]) == len(np.unique(np.ravel_multi_index(rounded.T, ref.shape[:3])))
    return out
