"""History: the inverse travels with the data, and the output's type decides the interpolation."""

import json

import numpy as np
import pytest
import scipy.ndimage as ndi

from medseg.data.phantom import make_phantom
from medseg.errors import DataError, GeometryError, UsageError
from medseg.transforms import History, Preprocessing, resample_to_grid
from medseg.transforms.crop import uncrop
from medseg.transforms.history import Cropped, Reoriented, Resampled
from medseg.transforms.orientation import apply_orientation, invert_orientation
from medseg.volume import LabelMap, Probabilities, Volume

FULL = {"orientation": "RAS", "crop_foreground": True, "spacing_mm": [3.0, 2.5, 4.0]}


@pytest.fixture(scope="module")
def oblique_lps():
    """An oblique LPS phantom and its preprocessing through orientation, crop and resampling."""
    case = make_phantom((40, 34, 18), (1.2, 1.4, 2.0), "LPS", seed=2, oblique_deg=10)
    return case, Preprocessing.from_config(FULL).apply(case.image, case.label)


def _by_hand(history: History, array: np.ndarray, mode: str, fill) -> Volume:
    """The inverse written out step by step on plain Volumes with an explicit mode and fill."""
    vol = Volume(array, np.asarray(history.output_affine))
    for step in reversed(history.steps):
        if isinstance(step, Resampled):
            vol = resample_to_grid(vol, step.shape, np.asarray(step.affine), mode)
        elif isinstance(step, Cropped):
            vol = Volume(uncrop(vol.array, step.shape, step.start, fill), np.asarray(step.affine))
        else:
            vol = apply_orientation(vol, invert_orientation(np.asarray(step.transform)))
    return vol


def test_steps_recorded_in_order(oblique_lps):
    case, out = oblique_lps
    history = out.history
    assert [type(s) for s in history.steps] == [Reoriented, Cropped, Resampled]
    assert history.resamples
    assert history.input_shape == case.image.spatial_shape
    np.testing.assert_array_equal(np.asarray(history.input_affine), case.image.affine)
    assert history.output_shape == out.image.spatial_shape
    np.testing.assert_array_equal(np.asarray(history.output_affine), out.image.affine)
    # LPS -> RAS flips x and y: nibabel's ornt (axis stays, flip -1), (1, -1), (2, 1).
    assert history.steps[0].transform == ((0, -1), (1, -1), (2, 1))


def test_same_array_as_label_map_or_probabilities_gives_nearest_or_linear():
    """One integer array through one (resampling) History: as a LabelMap it comes back by
    nearest neighbour, as Probabilities linearly (checked against scipy's trilinear)."""
    case = make_phantom((30, 26, 14), (1.2, 1.4, 2.0), "LPS", seed=5, oblique_deg=10)
    history = Preprocessing.from_config({"spacing_mm": [3.0, 2.5, 4.0]}).apply(case.image).history
    affine = np.asarray(history.output_affine)
    array = np.random.default_rng(0).integers(0, 5, history.output_shape).astype(np.uint8)

    nearest = history.invert(LabelMap(array, affine))
    linear = history.invert(Probabilities(array[None].astype(np.float32), affine))

    assert isinstance(nearest, LabelMap) and nearest.array.dtype == np.uint8
    assert isinstance(linear, Probabilities) and linear.array.dtype == np.float32
    by_mode = resample_to_grid(Volume(array, affine), case.image.spatial_shape,
                               case.image.affine, "nearest")
    np.testing.assert_array_equal(nearest.array, by_mode.array)
    # scipy: output voxel i samples input index inv(A_out) @ A_in @ i (edges replicated).
    m = np.linalg.solve(affine, case.image.affine)
    ijk = np.indices(case.image.spatial_shape).reshape(3, -1).astype(np.float64)
    coords = m[:3, :3] @ ijk + m[:3, 3:4]
    expected = ndi.map_coordinates(array.astype(np.float64), coords, order=1, mode="nearest")
    np.testing.assert_allclose(linear.array[0].ravel(), expected, atol=1e-5)
    assert not np.array_equal(linear.array[0], nearest.array)  # the type made a difference
    np.testing.assert_array_equal(nearest.affine, case.image.affine)
    np.testing.assert_array_equal(linear.affine, case.image.affine)


def test_invert_dispatches_on_type_through_orientation_crop_and_resampling(oblique_lps):
    """LabelMap: nearest and padded with 0; Probabilities: linear and padded with one-hot
    background; restore_labels(LabelMap) is the nearest inversion."""
    case, out = oblique_lps
    history = out.history
    labels = history.restore_labels(out.label)
    expected = _by_hand(history, out.label.array, "nearest", 0)
    assert isinstance(labels, LabelMap) and labels.array.dtype == out.label.array.dtype
    np.testing.assert_array_equal(labels.array, expected.array)
    np.testing.assert_array_equal(history.invert(out.label).array, expected.array)
    np.testing.assert_array_equal(labels.affine, case.image.affine)
    assert (labels.array == case.label.array).mean() > 0.95

    rng = np.random.default_rng(1)
    probs = rng.random((3,) + history.output_shape).astype(np.float32)
    back = history.invert(Probabilities(probs, out.image.affine))
    hand = _by_hand(history, probs, "linear", np.array([1.0, 0.0, 0.0], np.float32))
    assert isinstance(back, Probabilities) and back.shape == (3,) + case.image.spatial_shape
    np.testing.assert_array_equal(back.array, hand.array)


def test_crop_pads_with_the_type_background():
    """By hand: a 2 x 2 x 3 box at (1, 2, 0) of a 4 x 5 x 3 grid."""
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    inner = affine.copy()
    inner[:3, 3] = [2.0, 4.0, 0.0]  # voxel (1, 2, 0) in mm
    history = History((4, 5, 3), affine, (2, 2, 3), inner,
                      [Cropped(start=np.array([1, 2, 0]), shape=[4, 5, 3], affine=affine)])
    assert not history.resamples
    labels = history.invert(LabelMap(np.full((2, 2, 3), 7, np.uint8), inner))
    expected = np.zeros((4, 5, 3), np.uint8)
    expected[1:3, 2:4, :] = 7
    np.testing.assert_array_equal(labels.array, expected)
    probs = np.zeros((3, 2, 2, 3), np.float32)
    probs[2] = 0.75
    probs[1] = 0.25
    back = history.invert(Probabilities(probs, inner))
    expected_p = np.zeros((3, 4, 5, 3), np.float32)
    expected_p[0] = 1.0  # certain background outside the box
    expected_p[:, 1:3, 2:4, :] = probs
    np.testing.assert_array_equal(back.array, expected_p)
    np.testing.assert_array_equal(history.restore_labels(Probabilities(probs, inner)).array,
                                  np.where(expected == 7, 2, 0))


def test_round_trip_through_json_inverts_identically(oblique_lps):
    _, out = oblique_lps
    text = json.dumps(out.history.to_dict())
    again = History.from_dict(json.loads(text))
    assert again == out.history and again.to_dict() == out.history.to_dict()
    for volume in (out.label, Probabilities(np.eye(6, dtype=np.float32)[out.label.array]
                                            .transpose(3, 0, 1, 2), out.image.affine)):
        np.testing.assert_array_equal(again.invert(volume).array,
                                      out.history.invert(volume).array)
        np.testing.assert_array_equal(again.restore_labels(volume).array,
                                      out.history.restore_labels(volume).array)


def test_from_dict_names_unknown_steps(oblique_lps):
    data = oblique_lps[1].history.to_dict()
    data["steps"][0]["step"] = "orientaton"
    with pytest.raises(DataError, match="did you mean 'orientation'"):
        History.from_dict(data)
    data["steps"][0] = {"step": "crop", "start": [0, 0, 0]}
    with pytest.raises(DataError, match=r"'crop' needs \['start', 'shape', 'affine'\]"):
        History.from_dict(data)


def test_the_type_is_required_and_the_grid_checked(oblique_lps):
    _, out = oblique_lps
    history = out.history
    with pytest.raises(UsageError, match="LabelMap .* or Probabilities .* got ndarray of shape"):
        history.restore_labels(out.label.array)
    with pytest.raises(UsageError, match="got Volume"):
        history.invert(Volume(out.label.array, out.label.affine))
    shifted = out.label.affine.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(GeometryError, match="preprocessed grid"):
        history.invert(LabelMap(out.label.array, shifted))
    wrong = np.zeros((2,) + tuple(n + 1 for n in history.output_shape), np.float32)
    with pytest.raises(GeometryError, match=r"expected spatial shape .* got shape \[2, "):
        history.restore_labels(Probabilities(wrong, out.image.affine))


def test_apply_types_the_label():
    case = make_phantom((20, 18, 12), (2.0, 2.0, 3.0), "LPS", seed=6)
    pre = Preprocessing.from_config({"orientation": "RAS", "spacing_mm": [3.0, 3.0, 3.0]})
    assert pre.apply(case.image).label is None
    out = pre.apply(case.image, case.label)  # a plain integer Volume
    assert type(case.label) is Volume and isinstance(out.label, LabelMap)
    expected = resample_to_grid(apply_orientation(case.label, out.history.steps[0].transform),
                                out.image.spatial_shape, out.image.affine, "nearest")
    np.testing.assert_array_equal(out.label.array, expected.array)
    with pytest.raises(DataError, match="label: a LabelMap needs an integer .*got dtype float32"):
        pre.apply(case.image, case.label.with_array(case.label.array.astype(np.float32)))
