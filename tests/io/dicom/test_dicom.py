"""DICOM series: geometry against SimpleITK and pydicom, series selection, missing slices."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medseg.cli import main
from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.io import read_volume


def _corners(shape):
    return [tuple(c) for c in itertools.product(*[(0, n - 1) for n in shape])]


def _sitk_reference(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _sitk_ras(image: sitk.Image, ijk) -> np.ndarray:
    return np.array(image.TransformIndexToPhysicalPoint([int(i) for i in ijk])) * [-1, -1, 1]


def test_corners_match_simpleitk(ct_dicom):
    volume = read_volume(ct_dicom)
    reference = _sitk_reference(ct_dicom)
    assert volume.shape == (512, 512, 20)
    assert volume.array.dtype == np.int16
    for ijk in _corners(volume.shape):
        np.testing.assert_allclose(volume.world_coords(ijk), _sitk_ras(reference, ijk), atol=1e-4)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference).T)


def test_slices_follow_image_position_patient(ct_dicom):
    """Independent of ITK: slice k's first voxel is that file's ImagePositionPatient."""
    volume = read_volume(ct_dicom)
    files = volume.meta["dicom_files"]
    assert len(files) == 20 and len(set(files)) == 20
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(volume.world_coords((0, 0, k)), lps * [-1, -1, 1], atol=1e-4)
        row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        step = volume.world_coords((1, 0, k)) - volume.world_coords((0, 0, k))
        np.testing.assert_allclose(step, row * [-1, -1, 1] * float(ds.PixelSpacing[1]), atol=1e-6)
    assert volume.meta["series_uid"] == str(ds.SeriesInstanceUID)
    assert volume.meta["study_uid"] == str(ds.StudyInstanceUID)


def test_convert_dicom_to_nifti_keeps_corners(ct_dicom, tmp_path, capsys):
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(ct_dicom), str(out)]) == 0
    img = nib.load(out)
    reference = _sitk_reference(ct_dicom)
    for ijk in _corners(img.shape):
        world = img.affine[:3, :3] @ ijk + img.affine[:3, 3]
        np.testing.assert_allclose(world, _sitk_ras(reference, ijk), atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), sitk.GetArrayFromImage(reference).T)


def test_missing_middle_slice_is_an_error(dicom_copy):
    files = sorted(dicom_copy.glob("*.dcm"))
    positions = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
                 for f in files}
    middle = sorted(files, key=positions.get)[10]
    middle.unlink()
    with pytest.raises(GeometryError, match="uneven slice spacing.*missing") as exc:
        read_volume(dicom_copy)
    assert str(dicom_copy) in str(exc.value)


def test_a_slice_with_another_pixel_spacing_is_an_error(dicom_copy):
    """A series is one grid: a slice whose PixelSpacing differs is refused, not misplaced."""
    odd = sorted(dicom_copy.glob("*.dcm"))[5]
    ds = pydicom.dcmread(odd)
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(odd)
    with pytest.raises(GeometryError, match=r"different PixelSpacing.*\[0\.5, 0\.5\] mm in "
                       + odd.name) as exc:
        read_volume(dicom_copy)
    assert str(dicom_copy) in str(exc.value)


def _add_second_series(folder: Path, description: str = "copy") -> str:
    uid = generate_uid()
    for f in sorted(folder.glob("CT*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SeriesDescription = description
        ds.save_as(folder / f"copy_{f.name}")
    return uid


def test_several_series_need_a_choice(dicom_copy):
    uid = _add_second_series(dicom_copy, "second copy")
    with pytest.raises(ImageReadError) as exc:
        read_volume(dicom_copy)
    message = str(exc.value)
    assert "holds 2 DICOM series" in message
    assert uid in message and "'second copy'" in message and "'CT Body 3.0'" in message
    assert message.count("(20 slices)") == 2


def test_series_selects_one(dicom_copy, ct_dicom):
    uid = _add_second_series(dicom_copy)
    volume = read_volume(dicom_copy, series=uid)
    original = read_volume(ct_dicom)
    assert volume.meta["series_uid"] == uid
    assert all(Path(f).name.startswith("copy_") for f in volume.meta["dicom_files"])
    np.testing.assert_array_equal(volume.array, original.array)
    np.testing.assert_array_equal(volume.affine, original.affine)
    with pytest.raises(UsageError, match="no DICOM series with SeriesInstanceUID"):
        read_volume(dicom_copy, series="1.2.3.4")


def test_convert_with_series_option(dicom_copy, tmp_path):
    uid = _add_second_series(dicom_copy)
    out = tmp_path / "picked.nrrd"
    assert main(["convert", str(dicom_copy), str(out), "--series", uid]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (512, 512, 20)
