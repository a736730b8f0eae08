"""Volume geometry against nibabel and hand calculations."""

import nibabel as nib
import numpy as np
import pytest

from medseg.data.phantom import rotation_z
from medseg.errors import DataError, GeometryError
from medseg.volume import LabelMap, Probabilities, Volume, affine_from, orientation_of


def test_spacing_orientation_origin_from_affine():
    affine = affine_from((0.7, 0.8, 5.0), "LPS", origin_mm=(10.0, -20.0, 30.0))
    vol = Volume(np.zeros((4, 5, 6), np.int16), affine)
    assert vol.spacing_mm == pytest.approx((0.7, 0.8, 5.0))
    assert vol.orientation == "LPS"
    assert vol.origin_mm == (10.0, -20.0, 30.0)
    assert vol.shape == (4, 5, 6) and vol.spatial_shape == (4, 5, 6)
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.7, -0.8, 5.0]))
    # nibabel agrees on voxel sizes and axis codes.
    assert np.allclose(nib.affines.voxel_sizes(affine), vol.spacing_mm)
    assert "".join(nib.aff2axcodes(affine)) == vol.orientation


def test_oblique_spacing_is_column_norm():
    affine = affine_from((1.0, 2.0, 3.0), "RAS", rotation=rotation_z(30))
    vol = Volume(np.zeros((3, 3, 3)), affine)
    assert vol.spacing_mm == pytest.approx((1.0, 2.0, 3.0))
    assert vol.voxel_volume_ml == pytest.approx(6.0 / 1000.0)


def test_crop_moves_origin_and_keeps_world_positions():
    affine = affine_from((2.0, 3.0, 4.0), "LPS", origin_mm=(5.0, 6.0, 7.0))
    vol = Volume(np.arange(6 * 7 * 8).reshape(6, 7, 8), affine)
    sub = vol.crop((1, 2, 3), (4, 6, 8))
    assert sub.shape == (3, 4, 5)
    assert sub.array[0, 0, 0] == vol.array[1, 2, 3]
    np.testing.assert_allclose(sub.world_coords([0, 0, 0]), vol.world_coords([1, 2, 3]))
    # Hand value: LPS flips x and y: origin + (-2*1, -3*2, 4*3).
    np.testing.assert_allclose(sub.origin_mm, (3.0, 0.0, 19.0))


def test_channels_first_and_with_array():
    vol = Volume(np.zeros((2, 4, 5, 6)), np.eye(4))
    assert vol.has_channels and vol.spatial_shape == (4, 5, 6)
    other = vol.with_array(np.ones((4, 5, 6), np.uint8))
    assert other.same_grid(vol) and other.array.dtype == np.uint8
    with pytest.raises(GeometryError, match="does not fit"):
        vol.with_array(np.ones((4, 5, 7)))


@pytest.mark.parametrize("shape", [(4, 5), (1, 2, 3, 4, 5)])
def test_rejects_wrong_ndim(shape):
    with pytest.raises(GeometryError, match="3D"):
        Volume(np.zeros(shape), np.eye(4))


def test_rejects_bad_affine():
    with pytest.raises(GeometryError, match="4x4"):
        Volume(np.zeros((2, 2, 2)), np.eye(3))
    singular = np.eye(4)
    singular[2, 2] = 0
    with pytest.raises(GeometryError, match="singular"):
        Volume(np.zeros((2, 2, 2)), singular)
    huge = np.diag([1e308, 1e308, 1.0, 1.0])  # finite entries, infinite voxel volume
    with pytest.raises(GeometryError, match="spacing is too large"):
        Volume(np.zeros((2, 2, 2)), huge)


def test_rejects_axes_too_parallel_to_name_but_keeps_strong_shear():
    # |det| = 1e-3 mm^3 (not singular), but the unit columns of axes 0 and 1 differ by 1e-15:
    # nibabel's aff2axcodes gives ("R", None, "S")
    parallel = np.array([[1e6, 1e6, 0, 0], [0, 1e-9, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    assert nib.aff2axcodes(parallel) == ("R", None, "S")
    with pytest.raises(GeometryError, match=r"axis 1 is nearly parallel to another axis"):
        Volume(np.zeros((2, 2, 2)), parallel)
    with pytest.raises(GeometryError, match=r"axis columns \(1e\+06, 0, 0; 1e\+06, 1e-09, 0"):
        orientation_of(parallel)
    sheared = parallel.copy()
    sheared[1, 1] = 1e-3  # axes 0.06 degrees apart: a direction each, as nibabel names them
    assert Volume(np.zeros((2, 2, 2)), sheared).orientation == "".join(nib.aff2axcodes(sheared))


def test_affine_from_rejects_bad_codes():
    with pytest.raises(GeometryError, match="axis codes"):
        affine_from((1, 1, 1), "RRS")


def test_label_map_refuses_floats_and_channels():
    affine = affine_from((1.0, 2.0, 3.0), "LPS")
    labels = LabelMap(np.arange(24, dtype=np.uint16).reshape(2, 3, 4), affine)
    assert labels.background == 0 and repr(labels).startswith("LabelMap(shape=(2, 3, 4)")
    with pytest.raises(DataError, match="integer array .*got dtype float32"):
        LabelMap(np.zeros((2, 3, 4), np.float32), affine)
    with pytest.raises(DataError, match="got dtype bool"):
        LabelMap(np.zeros((2, 3, 4), bool), affine)
    with pytest.raises(GeometryError, match=r"one \(x, y, z\) map, got shape \(1, 2, 3, 4\)"):
        LabelMap(np.zeros((1, 2, 3, 4), np.uint8), affine)


def test_probabilities_refuse_integers_and_3d():
    affine = np.eye(4)
    probs = Probabilities(np.full((3, 2, 2, 2), 1 / 3, np.float32), affine)
    assert probs.num_classes == 3
    np.testing.assert_array_equal(probs.background, [1.0, 0.0, 0.0])
    assert probs.background.dtype == np.float32
    with pytest.raises(DataError, match="floating array, got dtype uint8"):
        Probabilities(np.zeros((3, 2, 2, 2), np.uint8), affine)
    with pytest.raises(GeometryError, match=r"\(K, x, y, z\).*got shape \(2, 2, 2\)"):
        Probabilities(np.zeros((2, 2, 2), np.float32), affine)


def test_with_array_and_crop_keep_the_type():
    affine = affine_from((2.0, 3.0, 4.0), "LPS", origin_mm=(5.0, 6.0, 7.0))
    labels = LabelMap(np.arange(6 * 7 * 8, dtype=np.int32).reshape(6, 7, 8), affine)
    sub = labels.crop((1, 2, 3), (4, 6, 8))
    assert type(sub) is LabelMap and sub.array[0, 0, 0] == labels.array[1, 2, 3]
    np.testing.assert_allclose(sub.origin_mm, (3.0, 0.0, 19.0))  # as for a plain Volume
    assert type(labels.with_array(labels.array.astype(np.uint8))) is LabelMap
    with pytest.raises(DataError, match="LabelMap needs an integer array"):
        labels.with_array(labels.array * 0.5)
    probs = Probabilities(np.zeros((2, 6, 7, 8), np.float32), affine)
    assert type(probs.crop((0, 0, 0), (2, 2, 2))) is Probabilities
    assert probs.crop((0, 0, 0), (2, 2, 2)).shape == (2, 2, 2, 2)
    assert type(Volume(labels.array, affine).with_array(labels.array)) is Volume
