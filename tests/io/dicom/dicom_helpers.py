"""Building DICOM test objects with pydicom: CT slices of known geometry, the real samples."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# <repo>/../shared/data/dicom_samples; tests/io/dicom/dicom_helpers.py -> parents[3] is the repo.
SAMPLES = Path(__file__).resolve().parents[3] / "../shared/data/dicom_samples"


def sample(name: str) -> Path:
    """A path inside the shared dicom_samples; skips the test when they are absent."""
    path = (SAMPLES / name).resolve()
    if path.exists():
        return path
    pytest.skip(f"DICOM samples {name} not found in {SAMPLES.resolve()} (../shared is absent)")


def copy_files(files: Sequence[Path], folder: Path) -> Path:
    """Copy ``files`` into ``folder`` (created); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, folder / Path(f).name)
    return folder


def ct_slice(
    pixels: np.ndarray,
    position: Sequence[float],
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (1.0, 1.0),
    series_uid: str = "1.2.3.4",
    **tags,
) -> Dataset:
    """One CT Image Storage slice holding ``pixels`` (rows, columns), uncompressed.

    ``spacing`` is PixelSpacing (between rows, between columns) in mm; int16
    pixels are signed, uint16 unsigned; ``tags`` sets further attributes.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.ImageType = "CT", "phantom", ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", series_uid
    ds.FrameOfReferenceUID = "1.2.3.5"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(pixels.dtype == np.int16)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def world_lps(ds: Dataset, shape: tuple[int, int]) -> np.ndarray:
    """LPS mm of every pixel of a slice, (rows, columns, 3), from its tags (the DICOM formula)."""
    row = np.array(ds.ImageOrientationPatient[:3], float)
    col = np.array(ds.ImageOrientationPatient[3:], float)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    j, i = np.mgrid[: shape[0], : shape[1]]  # j: row index, i: column index
    origin = np.array(ds.ImagePositionPatient, float)
    return origin + i[..., None] * dx * row + j[..., None] * dy * col
