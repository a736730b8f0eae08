import numpy as np
import pytest

from medseg.data.phantom import make_phantom
from medseg.errors import GeometryError
from medseg.transforms import apply_orientation, invert_orientation, orientation_transform, reorient
from medseg.volume import Volume

CASES = [("RAS", 0.0), ("LPS", 0.0), ("LPS", 25.0), ("PIR", 0.0), ("ASL", 40.0)]


@pytest.mark.parametrize("orientation,oblique", CASES)
@pytest.mark.parametrize("target", ["RAS", "LPS", "SRA"])
def test_reorient_preserves_world_positions_and_inverts_exactly(orientation, oblique, target):
    case = make_phantom((12, 10, 9), (1.0, 1.5, 2.0), orientation, seed=1, oblique_deg=oblique)
    image = case.image
    out = reorient(image, target)
    assert out.orientation == target
    # Every voxel keeps its value at the same world point (independent check via world coords).
    ijk_new = np.argwhere(np.ones(out.spatial_shape, bool))
    world = out.world_coords(ijk_new)
    ijk_old = np.rint(np.linalg.solve(image.affine[:3, :3], (world - image.affine[:3, 3]).T).T)
    np.testing.assert_allclose(
        ijk_old, np.linalg.solve(image.affine[:3, :3], (world - image.affine[:3, 3]).T).T, atol=1e-9
    )
    old_vals = image.array[tuple(ijk_old.astype(int).T)]
    np.testing.assert_array_equal(out.array[tuple(ijk_new.T)], old_vals)
    # Inverse is exact: same bytes, same affine.
    transform = orientation_transform(image.affine, target)
    back = apply_orientation(out, invert_orientation(transform))
    np.testing.assert_array_equal(back.array, image.array)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-12)


def test_reorient_matches_nibabel_for_channels():
    import nibabel as nib

    rng = np.random.default_rng(0)
    array = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    vol = Volume(array, np.diag([-1.0, -2.0, 3.0, 1.0]))
    out = reorient(vol, "RAS")
    img = nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(array, 0, -1), vol.affine))
    np.testing.assert_array_equal(out.array, np.moveaxis(np.asarray(img.dataobj), -1, 0))
    np.testing.assert_allclose(out.affine, img.affine)


@pytest.mark.parametrize("source", ["RAS", "LPS", "PIR"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_layout_positive_strides_and_no_copy_without_flips(source, order):
    """Any memory order in, the same values as nibabel's apply_orientation out, positive
    strides (torch.from_numpy takes them), and a view of the input when nothing flips."""
    import nibabel.orientations as nio
    import torch

    case = make_phantom((12, 10, 9), (1.0, 1.5, 2.0), source, seed=1)
    vol = Volume(np.asarray(case.image.array, order=order), case.image.affine)
    transform = orientation_transform(vol.affine, "RAS")
    out = apply_orientation(vol, transform)
    np.testing.assert_array_equal(out.array, nio.apply_orientation(vol.array, transform))
    assert all(stride > 0 for stride in out.array.strides)
    assert torch.from_numpy(out.array).shape == out.array.shape
    flips = bool((transform[:, 1] == -1).any())
    assert np.shares_memory(out.array, vol.array) is not flips


def test_bad_orientation_is_named():
    vol = Volume(np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(GeometryError, match="RAX"):
        reorient(vol, "RAX")
