"""NIfTI reading and writing against nibabel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medseg.io import read_volume, write_volume
from medseg.volume import Volume


def test_real_ct_equals_nibabel(ct_nifti):
    img = nib.load(ct_nifti)
    expected = np.asanyarray(img.dataobj)
    volume = read_volume(ct_nifti)
    assert volume.array.dtype == expected.dtype == np.int16
    np.testing.assert_array_equal(volume.array, expected)
    np.testing.assert_array_equal(volume.affine, img.affine)
    assert volume.shape == (122, 101, 30)
    assert volume.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert volume.orientation == "RAS"


def test_real_labels_stay_uint8(seg_nifti):
    volume = read_volume(seg_nifti)
    expected = np.asanyarray(nib.load(seg_nifti).dataobj)
    assert volume.array.dtype == np.uint8
    np.testing.assert_array_equal(volume.array, expected)


def test_scaled_data_as_nibabel_dataobj(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header.set_slope_inter(0.5, -10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(img, path)
    volume = read_volume(path)
    assert volume.array.dtype == np.float64  # nibabel's scaled type
    np.testing.assert_array_equal(volume.array, data * 0.5 - 10.0)
    np.testing.assert_array_equal(volume.array, np.asanyarray(nib.load(path).dataobj))


def test_qform_only_affine_as_nibabel(tmp_path):
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), None)
    img.set_qform(affine, code=1)
    img.set_sform(None, code=0)
    path = tmp_path / "qform.nii"
    nib.save(img, path)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.affine, nib.load(path).affine, atol=1e-6)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)


def test_channels_last_4d_becomes_channels_first(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7, 3)).astype(np.float32)
    path = tmp_path / "multi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    volume = read_volume(path)
    assert volume.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(volume.array[2], data[..., 2])
    out = write_volume(volume, tmp_path / "multi_out.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), data)


def test_written_gzip_is_standard_and_matches_nibabel(phantoms, tmp_path):
    volume = phantoms["oblique-int16"]
    path = write_volume(volume, tmp_path / "ct.nii.gz")
    with gzip.open(path, "rb") as f:  # stdlib zlib inflates ISA-L output
        raw = f.read()
    img = nib.Nifti1Image.from_bytes(raw)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), volume.array)
    np.testing.assert_allclose(img.affine, volume.affine, atol=1e-5)
    assert img.header["sform_code"] == 1 and img.header["qform_code"] == 1
    assert img.header.get_xyzt_units()[0] == "mm"


def test_gz_named_file_that_is_not_compressed_is_read(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_volume(path).array, data)


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(np.int64, np.uint8), (np.bool_, np.uint8), (np.float16, np.float32)],
)
def test_dtypes_nifti_cannot_store_are_narrowed(tmp_path, dtype, stored):
    data = (np.arange(60).reshape(3, 4, 5) % 4).astype(dtype)
    path = write_volume(Volume(data, np.eye(4)), tmp_path / "narrow.nii.gz")
    back = np.asanyarray(nib.load(path).dataobj)
    assert back.dtype == stored
    np.testing.assert_array_equal(back, data.astype(stored))


def test_nifti2_read(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, data)
    assert volume.spacing_mm == pytest.approx((1.0, 2.0, 3.0))
