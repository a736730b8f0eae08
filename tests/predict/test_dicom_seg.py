"""DICOM-SEG writing: every segment lands where the label map (and the source pixels) put it.

References are independent of medseg's geometry code: positions come from the
DICOM tags (Image Position / Orientation (Patient), Pixel Spacing) of the
source slices and of the SEG's per-frame functional groups, read with pydicom.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medseg.errors import DataError, GeometryError
from medseg.io.dicom.derived import DerivedSeries
from medseg.io.dicom.seg import write_dicom_seg
from medseg.volume import Volume

from .predict_helpers import (
    LABEL_NAMES,
    label_centroids_lps,
    seg_centroids_lps,
    threshold_labels,
)


def write_series(folder: Path, hu: np.ndarray, iop, ipp0, spacing, step_lps) -> list[Path]:
    """Write ``hu`` (slices, rows, cols) as single-frame CT files, in shuffled file-name order."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = list(range(hu.shape[0]))
    random.Random(0).shuffle(order)
    paths = []
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"im{order[k]:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality, ds.Manufacturer = "Phantom^Test", "P1", "CT", "x"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
        ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ipp0) + k * np.asarray(step_lps)]
        ds.PixelSpacing = [float(v) for v in spacing[:2]]
        ds.SliceThickness = float(np.linalg.norm(step_lps))
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu[k].astype("<i2").tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def blobs(shape) -> np.ndarray:
    """(slices, rows, cols) HU with two asymmetric boxes of class 1 and 2 (threshold network)."""
    hu = np.full(shape, -50, np.int16)
    hu[1:4, 2:5, 1:3] = 150   # class 1
    hu[3:6, 6:11, 5:9] = 400  # class 2
    return hu


# -- synthetic series, several geometries -------------------------------------------------------
GEOMETRIES = {
    "axial": ([1, 0, 0, 0, 1, 0], [-40.0, 20.0, 100.0], (0.8, 0.7), [0, 0, -2.5]),
    "sagittal": ([0, 1, 0, 0, 0, -1], [10.0, -30.0, 50.0], (1.2, 0.9), [3.0, 0, 0]),
    "coronal_flipped": ([-1, 0, 0, 0, 0, -1], [5.0, 7.0, 9.0], (1.0, 1.5), [0, -2.0, 0]),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_frames_match_source_pixels(tmp_path, threshold_ckpt, geometry):
    """Predict on a written series; each SEG frame equals the thresholded source slice."""
    from medseg.inference.predict import predict_case
    from medseg.io import read_volume
    from medseg.runtime import Runtime

    iop, ipp0, spacing, step = GEOMETRIES[geometry]
    hu = blobs((7, 12, 10))
    files = write_series(tmp_path / "series", hu, iop, ipp0, spacing, step)
    image = read_volume(tmp_path / "series")
    labels = predict_case(threshold_ckpt, image, runtime=Runtime.cpu()).labels
    out = write_dicom_seg(labels, tmp_path / "seg.dcm",
                          DerivedSeries(image.meta["dicom_files"], LABEL_NAMES))

    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["soft_tissue", "dense"]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"AUTOMATIC"}
    assert seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    referenced = {r.ReferencedSOPInstanceUID
                  for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    # frame by frame: the SEG frame at a source slice's position == threshold of its pixels
    by_position = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_position[tuple(np.round(np.array(ds.ImagePositionPatient, float), 3))] = ds
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    seen = {1: 0, 2: 0}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        source = by_position[tuple(np.round(pos, 3))]
        expected = threshold_labels(source.pixel_array) == number
        np.testing.assert_array_equal(frame.astype(bool), expected)
        seen[number] += int(expected.sum())
    assert seen == {v: int((threshold_labels(hu) == v).sum()) for v in (1, 2)}
    # and the centroids agree with the NIfTI-style label map through its affine
    seg_c, lab_c = seg_centroids_lps(out), label_centroids_lps(labels, LABEL_NAMES)
    for name in LABEL_NAMES.values():
        np.testing.assert_allclose(seg_c[name], lab_c[name], atol=1e-3)


def test_seg_refuses_foreign_grid_and_empty(tmp_path):
    iop, ipp0, spacing, step = GEOMETRIES["axial"]
    files = write_series(tmp_path / "s", blobs((7, 12, 10)), iop, ipp0, spacing, step)
    from medseg.io import read_volume

    image = read_volume(tmp_path / "s")
    labels = threshold_labels(image.array)
    flipped = image.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])  # x mirrored: not the series' grid
    with pytest.raises(GeometryError, match="not on the series' grid|outside the label grid"):
        write_dicom_seg(Volume(labels, flipped), tmp_path / "x.dcm",
                        DerivedSeries(files, LABEL_NAMES))
    half = image.affine.copy()
    half[:3, 3] += image.affine[:3, 0] * 0.5
    with pytest.raises(GeometryError, match="between voxel centres"):
        write_dicom_seg(Volume(labels, half), tmp_path / "x.dcm", DerivedSeries(files, LABEL_NAMES))
    with pytest.raises(DataError, match="x.dcm: the prediction has no foreground"):
        write_dicom_seg(Volume(np.zeros_like(labels), image.affine), tmp_path / "x.dcm",
                        DerivedSeries(files, LABEL_NAMES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
