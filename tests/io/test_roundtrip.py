"""write -> read round trips: bit-exact data, affine within 1e-5 mm, checked by peers too."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.io import read_volume, write_volume

FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha"]
GRIDS = ["RAS", "LPS", "oblique"]
KINDS = ["int16", "uint8", "float32"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip(phantoms, tmp_path, leftovers, ext, grid, kind):
    volume = phantoms[f"{grid}-{kind}"]
    path = write_volume(volume, tmp_path / f"case{ext}")
    assert leftovers(tmp_path) == [path.name]
    back = read_volume(path)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5, rtol=0)
    assert back.orientation == volume.orientation


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nhdr", ".mhd"])
def test_itk_sees_the_same_world_points(phantoms, tmp_path, ext):
    """SimpleITK, reading our file, puts every corner voxel where our affine says (LPS)."""
    volume = phantoms["oblique-int16"]
    path = write_volume(volume, tmp_path / f"case{ext}")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == volume.shape  # ITK size is (x, y, z) too
    x, y, z = (s - 1 for s in volume.shape)
    for ijk in [(0, 0, 0), (x, 0, 0), (0, y, 0), (0, 0, z), (x, y, z), (3, 5, 7)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        ras = volume.world_coords(ijk)
        np.testing.assert_allclose(lps * [-1, -1, 1], ras, atol=1e-5)
        assert image[ijk] == volume.array[ijk]
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)


def test_nifti_read_by_nibabel_and_itk_agree(phantoms, tmp_path):
    volume = phantoms["LPS-uint8"]
    path = write_volume(volume, tmp_path / "labels.nii.gz")
    np.testing.assert_allclose(nib.load(path).affine, volume.affine, atol=1e-5)
    image = sitk.ReadImage(str(path))
    lps = np.array(image.TransformIndexToPhysicalPoint((4, 3, 2)))
    np.testing.assert_allclose(lps * [-1, -1, 1], volume.world_coords((4, 3, 2)), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).T, volume.array)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_vector_image_channels_first(phantoms, tmp_path, ext):
    base = phantoms["oblique-float32"]
    stacked = np.stack([base.array, -base.array, 2 * base.array])
    volume = base.with_array(stacked)
    path = write_volume(volume, tmp_path / f"vec{ext}")
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert image[(2, 3, 4)] == pytest.approx(tuple(stacked[:, 2, 3, 4]))
    back = read_volume(path)
    assert back.shape == (3, 20, 18, 12)
    np.testing.assert_array_equal(back.array, stacked)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    with pytest.raises(Exception, match="4D"):
        read_volume(path, channels=False)


def test_overwrite_keeps_permissions_readable(phantoms, tmp_path):
    path = write_volume(phantoms["RAS-uint8"], tmp_path / "a.nii.gz")
    assert path.stat().st_mode & 0o044  # not the 0600 of a temporary file
    write_volume(phantoms["LPS-uint8"], path)
    np.testing.assert_array_equal(read_volume(path).array, phantoms["LPS-uint8"].array)
