import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg.data.phantom import make_phantom
from medseg.errors import GeometryError, UsageError
from medseg.transforms import grid_for_spacing, resample, resample_to_grid
from medseg.volume import LabelMap, Probabilities, Volume, affine_from


@pytest.mark.parametrize("orientation,oblique", [("RAS", 0.0), ("LPS", 0.0), ("LPS", 30.0)])
@pytest.mark.parametrize("mode", ["linear", "cubic", "nearest"])
def test_equal_spacing_is_exact_identity(orientation, oblique, mode):
    case = make_phantom((14, 12, 10), (1.2, 0.8, 2.5), orientation, seed=2, oblique_deg=oblique)
    src = case.image if mode != "nearest" else case.label
    out = resample(src, src.spacing_mm, mode)
    assert out.spatial_shape == src.spatial_shape
    np.testing.assert_array_equal(out.affine, src.affine)
    np.testing.assert_array_equal(out.array, src.array)
    back = resample_to_grid(out, src.spatial_shape, src.affine, mode)
    np.testing.assert_array_equal(back.array, src.array)


def _ramp(shape, affine):
    """A function linear in world mm, sampled at voxel centres."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return world @ np.array([0.3, -0.7, 1.1]) + 5.0


@pytest.mark.parametrize("orientation,oblique", [("RAS", 0.0), ("LPS", 20.0)])
def test_spacing_change_preserves_world_positions(orientation, oblique):
    affine = affine_from((1.0, 1.5, 2.0), orientation, (3.0, -4.0, 7.0))
    if oblique:
        from medseg.data.phantom import rotation_z

        affine = affine_from((1.0, 1.5, 2.0), orientation, (3.0, -4.0, 7.0), rotation_z(oblique))
    shape = (20, 16, 12)
    vol = Volume(_ramp(shape, affine).astype(np.float32), affine)
    out = resample(vol, (0.7, 2.0, 1.3), "linear")
    assert out.spatial_shape == (29, 12, 18)  # round(20 * 1 / 0.7), round(16 * 1.5 / 2)...
    np.testing.assert_allclose(out.spacing_mm, (0.7, 2.0, 1.3), rtol=1e-12)
    # The field-of-view centre stays put.
    centre = lambda v: v.world_coords((np.asarray(v.spatial_shape) - 1) / 2.0)  # noqa: E731
    np.testing.assert_allclose(centre(out), centre(vol), atol=1e-9)
    # A world-linear ramp is reproduced exactly wherever the sample lies inside the source grid.
    expected = _ramp(out.spatial_shape, out.affine)
    src_idx = np.linalg.solve(affine, np.c_[
        np.argwhere(np.ones(out.spatial_shape, bool)) @ out.affine[:3, :3].T + out.affine[:3, 3],
        np.ones(np.prod(out.spatial_shape))].T)[:3].T.reshape(out.spatial_shape + (3,))
    inside = np.all((src_idx >= 0) & (src_idx <= np.asarray(shape) - 1), axis=-1)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(out.array[inside], expected[inside], atol=1e-3)


def test_linear_matches_scipy_map_coordinates():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(2, 11, 9, 7)).astype(np.float32)
    affine = affine_from((2.0, 1.0, 3.0), "LPS", (1.0, 2.0, 3.0))
    vol = Volume(array, affine)
    out = resample(vol, (1.3, 0.6, 2.2), "linear")
    m = np.linalg.solve(affine, out.affine)
    ijk = np.argwhere(np.ones(out.spatial_shape, bool)).astype(float)
    coords = (ijk @ m[:3, :3].T + m[:3, 3]).T
    coords = np.clip(coords, 0, (np.asarray(vol.spatial_shape) - 1)[:, None])
    for c in range(2):
        ref = ndi.map_coordinates(array[c].astype(np.float64), coords, order=1)
        np.testing.assert_allclose(out.array[c].ravel(), ref, atol=1e-5)
    near = resample(vol, (1.3, 0.6, 2.2), "nearest")
    ref0 = ndi.map_coordinates(array[0], np.floor(coords + 0.5), order=0)
    np.testing.assert_array_equal(near.array[0].ravel(), ref0)


@pytest.mark.parametrize("mode", ["linear", "cubic", "nearest"])
def test_any_memory_layout_gives_the_same_result(mode):
    """Fortran-ordered (as nibabel reads NIfTI), C-ordered and flipped views resample alike."""
    rng = np.random.default_rng(1)
    c_order = rng.integers(-1000, 1000, size=(23, 19, 11)).astype(np.int16)
    affine = affine_from((0.8, 0.9, 1.5), "RAS")
    ref = resample(Volume(c_order, affine), (1.5, 1.4, 3.0), mode).array
    flipped = np.flip(np.flip(c_order, 0).copy(), 0)  # same values, negative x stride
    assert flipped.strides[0] < 0
    for array in (np.asfortranarray(c_order), flipped, c_order[:, ::2][:, ::-1][:, ::-1]):
        if array.shape != c_order.shape:
            ref = resample(Volume(np.ascontiguousarray(array), affine), (1.5, 1.4, 3.0),
                           mode).array
        np.testing.assert_array_equal(resample(Volume(array, affine), (1.5, 1.4, 3.0),
                                               mode).array, ref)


def test_cubic_reproduces_quadratic_inside():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    i = np.arange(16, dtype=np.float64)
    array = np.broadcast_to((0.1 * i ** 2)[:, None, None], (16, 4, 4)).astype(np.float32)
    out = resample(Volume(array, affine), (0.5, 1.0, 1.0), "cubic")
    pos = out.world_coords(np.c_[np.arange(out.spatial_shape[0]), np.zeros((32, 2))])[:, 0]
    inner = (pos > 1) & (pos < 14)
    np.testing.assert_allclose(out.array[inner, 0, 0], 0.1 * pos[inner] ** 2, atol=1e-3)


def test_round_trip_of_labels_after_upsampling_is_exact():
    case = make_phantom((20, 18, 12), (2.0, 2.0, 3.0), "LPS", seed=3)
    up = resample(case.label, (1.0, 1.0, 1.5), "nearest")
    back = resample_to_grid(up, case.label.spatial_shape, case.label.affine, "nearest")
    np.testing.assert_array_equal(back.array, case.label.array)
    assert back.array.dtype == np.uint8


def test_errors():
    vol = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(UsageError, match="spacing_mm"):
        resample(vol, (1.0, 0.0, 1.0))
    with pytest.raises(UsageError, match="did you mean 'linear'"):
        resample(vol, (1.0, 1.0, 1.0), "lienar")
    with pytest.raises(GeometryError, match="rotated"):
        resample_to_grid(vol, (4, 4, 4), affine_from((1, 1, 1), "PRS"))
    shape, affine = grid_for_spacing((4, 4, 4), np.eye(4), (2, 2, 2))
    assert shape == (2, 2, 2)


@pytest.mark.parametrize("spacing", [(1.1, 0.9, 1.3), (2.0, 2.5, 4.0), (5.0, 4.0, 3.0)])
@pytest.mark.parametrize("slab", [1, 3, 8, 1000])
def test_resample_argmax_equals_full_resampling_then_argmax(spacing, slab):
    """Slab by slab (any slab size) gives exactly the argmax of the full linear resampling."""
    from medseg.transforms.resample_argmax import resample_argmax

    rng = np.random.default_rng(0)
    probs = Probabilities(rng.random((5, 17, 13, 11)).astype(np.float32),
                   affine_from((3.0, 2.5, 4.0), "LPS", (4.0, -2.0, 7.0)))
    shape, affine = grid_for_spacing(probs.spatial_shape, probs.affine, spacing)
    full = resample_to_grid(probs, shape, affine, "linear").array
    out = resample_argmax(probs, shape, affine, slab=slab)
    assert isinstance(out, LabelMap)
    assert out.array.dtype == np.uint8 and out.spatial_shape == tuple(shape)
    np.testing.assert_array_equal(out.affine, affine)
    np.testing.assert_array_equal(out.array, full.argmax(axis=0))


@pytest.mark.parametrize("spacing", [(1.0, 1.2, 1.5), (3.0, 2.5, 1.0), (2.0, 2.5, 4.0)])
def test_resample_argmax_interpolates_only_near_boundaries(spacing, monkeypatch):
    """Smooth class regions (softmax of distances to 4 centres): the labels still equal
    the full resampling's argmax, and only output voxels of mixed source cells (near the
    class boundaries) are interpolated; an identity axis (2.5 mm kept) is not either."""
    from medseg.transforms import resample_argmax as module

    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (20, 18, 16)],
                                indexing="ij"))
    centres = np.array([[3, 3, 3], [16, 4, 12], [5, 14, 10], [12, 12, 2]], np.float32)
    logits = -np.stack([np.linalg.norm(grid - c[:, None, None, None], axis=0) for c in centres])
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    vol = Probabilities(probs.astype(np.float32), affine_from((3.0, 2.5, 4.0), "RAS"))
    shape, affine = grid_for_spacing(vol.spatial_shape, vol.affine, spacing)
    seen = []
    original = module._interpolate
    monkeypatch.setattr(module, "_interpolate",
                        lambda p, axes, order, voxel: seen.append(len(voxel[0]))
                        or original(p, axes, order, voxel))
    out = module.resample_argmax(vol, shape, affine, slab=5)
    full = resample_to_grid(vol, shape, affine, "linear").array.argmax(axis=0)
    np.testing.assert_array_equal(out.array, full)
    assert 0 < sum(seen) < 0.3 * np.prod(shape), (sum(seen), np.prod(shape))


def test_resample_argmax_label_dtype_follows_predict_contract():
    """uint8 up to 256 classes (labels 0..255), uint16 above (medseg.argmax.label_dtype),
    whichever path; the top label survives (no wrap to 0)."""
    from medseg.transforms.resample_argmax import resample_argmax

    rng = np.random.default_rng(2)
    for k, dtype in ((255, np.uint8), (256, np.uint8), (257, np.uint16)):
        array = rng.random((k, 6, 5, 4)).astype(np.float32)
        array[k - 1, 2:, :, :] = 2.0  # class k - 1 wins over half the volume
        probs = Probabilities(array, affine_from((2.0, 2.0, 2.0), "RAS"))
        shape, affine = grid_for_spacing(probs.spatial_shape, probs.affine, (1.0, 1.5, 1.0))
        out = resample_argmax(probs, shape, affine)
        full = resample_to_grid(probs, shape, affine, "linear").array.argmax(axis=0)
        assert out.array.dtype == dtype and out.array.max() == k - 1
        np.testing.assert_array_equal(out.array, full)
    with pytest.raises(UsageError, match="needs Probabilities"):
        resample_argmax(Volume(array, probs.affine), shape, affine)


def test_type_decides_the_mode_and_is_kept():
    """No mode: a LabelMap is resampled nearest, Probabilities (and plain Volumes) linearly;
    the result keeps the type; a LabelMap refuses an interpolating mode."""
    case = make_phantom((20, 18, 12), (2.0, 2.0, 3.0), "LPS", seed=3)
    shape, affine = grid_for_spacing(case.label.spatial_shape, case.label.affine, (1.3, 1.7, 2.2))
    labels = LabelMap(case.label.array, case.label.affine)
    out = resample_to_grid(labels, shape, affine)
    assert type(out) is LabelMap
    np.testing.assert_array_equal(
        out.array, resample_to_grid(case.label, shape, affine, "nearest").array)
    probs = Probabilities(case.label.array[None].astype(np.float32), case.label.affine)
    linear = resample_to_grid(probs, shape, affine)
    assert type(linear) is Probabilities
    np.testing.assert_array_equal(
        linear.array, resample_to_grid(Volume(probs.array, probs.affine), shape, affine,
                                       "linear").array)
    assert not np.array_equal(linear.array[0], out.array)
    assert type(resample(labels, (3.0, 3.0, 3.0))) is LabelMap
    with pytest.raises(UsageError, match="LabelMap is resampled by nearest neighbour, got mode "
                                         "'linear'"):
        resample_to_grid(labels, shape, affine, "linear")
