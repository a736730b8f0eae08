"""Fixtures for the I/O tests: the shared real data, small phantoms, DICOM copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.data.phantom import make_phantom
from medseg.volume import Volume

# <repo>/../shared/data/totalsegmentator; tests/io/conftest.py -> parents[2] is the repo.
SHARED = Path(__file__).resolve().parents[2] / "../shared/data/totalsegmentator"


def _shared(name: str) -> Path:
    path = (SHARED / name).resolve()
    if not path.exists():
        pytest.skip(f"real test data {name} not found in {SHARED.resolve()} (../shared is absent)")
    return path


@pytest.fixture(scope="session")
def ct_nifti() -> Path:
    """TotalSegmentator's 122 x 101 x 30 CT (int16, RAS)."""
    return _shared("ct.nii.gz")


@pytest.fixture(scope="session")
def seg_nifti() -> Path:
    """TotalSegmentator's uint8 label map on the CT's grid."""
    return _shared("seg.nii.gz")


@pytest.fixture(scope="session")
def ct_dicom() -> Path:
    """A 20-slice CT DICOM series folder (read only)."""
    return _shared("ct_dicom")


@pytest.fixture
def dicom_copy(ct_dicom: Path, tmp_path: Path) -> Path:
    """A writable copy of the DICOM series in tmp_path/series."""
    folder = tmp_path / "series"
    folder.mkdir()
    for f in sorted(ct_dicom.glob("*.dcm")):
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def phantoms() -> dict[str, Volume]:
    """Small phantoms: int16 CT, uint8 labels and float32, for RAS, LPS and oblique grids.

    Keys ``"<orientation>-<kind>"``; orientation in ``RAS``, ``LPS``, ``oblique``
    (RAS rotated 20 degrees about S), kind in ``int16``, ``uint8``, ``float32``.
    """
    out: dict[str, Volume] = {}
    grids = {"RAS": ("RAS", 0.0), "LPS": ("LPS", 0.0), "oblique": ("RAS", 20.0)}
    for name, (orientation, oblique) in grids.items():
        case = make_phantom((20, 18, 12), (1.5, 1.25, 2.5), orientation, seed=3,
                            oblique_deg=oblique)
        affine = case.image.affine.copy()
        affine[:3, 3] += (12.25, -31.5, 57.125)  # an origin away from 0
        out[f"{name}-int16"] = Volume(case.image.array, affine)
        out[f"{name}-uint8"] = Volume(case.label.array, affine)
        floats = case.image.array.astype(np.float32) / np.float32(7.3)
        out[f"{name}-float32"] = Volume(floats, affine)
    return out


def _leftovers(folder: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """Names in ``folder`` other than ``keep`` (temporary files, partial outputs)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.fixture
def leftovers():
    """``leftovers(folder, keep)``: names in a folder besides ``keep``."""
    return _leftovers
