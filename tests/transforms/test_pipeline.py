import json

import numpy as np
import pytest

from medseg.data.phantom import make_phantom
from medseg.errors import ConfigError, GeometryError
from medseg.transforms import History, Preprocessing
from medseg.volume import LabelMap, Probabilities

CONFIG = {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 3.0],
          "intensity": {"mode": "ct", "window": [-200, 300]}, "crop_foreground": True}


def test_config_round_trip():
    pre = Preprocessing.from_config(CONFIG)
    assert pre.to_config() == CONFIG
    assert Preprocessing.from_config(json.loads(json.dumps(pre.to_config()))).to_config() == CONFIG
    mr = {"intensity": {"mode": "mr", "clip_percentiles": [0.5, 99.5]},
          "crop_foreground": {"threshold": 0, "margin": 1}, "interpolation": "cubic"}
    assert Preprocessing.from_config(mr).to_config() == mr


@pytest.mark.parametrize("bad,match", [
    ({"spacing": [1, 1, 1]}, "did you mean 'spacing_mm'"),
    ({"intensity": {"mode": "cta"}}, "did you mean 'ct'"),
    ({"intensity": {"mode": "ct"}}, "window"),
    ({"intensity": {"mode": "ct", "window": [300, -200]}}, "lo < hi"),
    ({"crop_foreground": "yes"}, "crop_foreground"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        Preprocessing.from_config(bad)


@pytest.mark.parametrize("orientation,oblique", [("RAS", 0.0), ("LPS", 0.0), ("LPS", 30.0)])
def test_round_trip_at_equal_spacing_is_exact(orientation, oblique):
    case = make_phantom((40, 36, 20), (1.5, 1.5, 3.0), orientation, seed=4, oblique_deg=oblique)
    pre = Preprocessing.from_config(CONFIG)
    out = pre.apply(case.image, case.label)
    image_t, label_t, history = out.image, out.label, out.history
    assert image_t.array.dtype == np.float32 and image_t.array.ndim == 4
    assert image_t.orientation == "RAS" and label_t.same_grid(image_t)
    assert isinstance(label_t, LabelMap) and label_t.array.dtype == case.label.array.dtype
    assert 0.0 <= image_t.array.min() and image_t.array.max() <= 1.0
    history = History.from_dict(json.loads(json.dumps(history.to_dict())))
    back = history.invert(label_t)
    assert isinstance(back, LabelMap) and back.spatial_shape == case.label.spatial_shape
    np.testing.assert_array_equal(back.affine, case.label.affine)
    np.testing.assert_array_equal(back.array, case.label.array)
    probs = np.eye(6, dtype=np.float32)[label_t.array].transpose(3, 0, 1, 2)
    back_p = history.invert(Probabilities(probs, image_t.affine))
    assert isinstance(back_p, Probabilities) and back_p.shape == (6,) + case.label.spatial_shape
    np.testing.assert_array_equal(back_p.array.argmax(0), case.label.array)


def test_round_trip_with_spacing_change():
    case = make_phantom((48, 40, 24), (1.0, 1.0, 2.0), "LPS", seed=5)
    pre = Preprocessing.from_config(CONFIG)
    out = pre.apply(case.image, case.label)
    np.testing.assert_allclose(out.image.spacing_mm, (1.5, 1.5, 3.0))
    back = out.history.invert(out.label)
    np.testing.assert_array_equal(back.affine, case.label.affine)
    assert (back.array == case.label.array).mean() > 0.97
    # The CT window by hand on a voxel that neither moves nor is resampled away.
    pre2 = Preprocessing.from_config({"intensity": {"mode": "ct", "window": [-200, 300]}})
    out = pre2.apply(case.image).image
    hu = case.image.array.astype(np.float32)
    np.testing.assert_allclose(out.array[0], np.clip((hu + 200) / 500, 0, 1), atol=1e-6)


def test_invert_checks_grid():
    case = make_phantom((16, 16, 12), (2.0, 2.0, 3.0), seed=6)
    pre = Preprocessing.from_config(CONFIG)
    history = pre.apply(case.image, case.label).history
    with pytest.raises(GeometryError, match=r"preprocessed grid: expected spatial shape \["
                                            r"\d+, \d+, \d+\].*got shape \[3, 3, 3\]"):
        history.restore_labels(LabelMap(np.zeros((3, 3, 3), np.uint8), history.output_affine))
    other = make_phantom((16, 16, 10), (2.0, 2.0, 3.0), seed=6)
    with pytest.raises(GeometryError, match="label grid"):
        pre.apply(case.image, other.label)


@pytest.mark.parametrize("config", [
    {"orientation": "RAS", "spacing_mm": [3.0, 2.5, 4.0], "intensity": {"mode": "ct",
                                                                       "window": [-200, 300]}},
    {"orientation": "RAS", "crop_foreground": True},
    {"spacing_mm": [3.0, 2.5, 4.0], "interpolation": "cubic",
     "intensity": {"mode": "mr", "clip_percentiles": [1, 99]}},
])
def test_integer_input_gives_float32_equal_to_float_input(config):
    """int16 travels through the steps (no up-front float32 copy) with the same result as
    a float32 input, also in Fortran order (as nibabel reads NIfTI)."""
    from medseg.volume import Volume

    case = make_phantom((30, 26, 14), (1.5, 1.8, 2.5), "LPS", seed=4, noise_hu=10.0)
    pre = Preprocessing.from_config(config)
    ref = pre.apply(case.image.with_array(case.image.array.astype(np.float32))).image
    for array in (case.image.array, np.asfortranarray(case.image.array)):
        assert array.dtype == np.int16
        out = pre.apply(Volume(array, case.image.affine)).image
        assert out.array.dtype == np.float32
        np.testing.assert_array_equal(out.array, ref.array)
        np.testing.assert_array_equal(out.affine, ref.affine)


def test_restore_labels_equals_prob_inversion_then_argmax():
    """restore_labels(Probabilities) (slab-wise, never the (K, x, y, z) array on the input
    grid) gives the argmax of invert(Probabilities) through orientation, crop and
    resampling; without a resampling step it is the plain argmax."""
    case = make_phantom((40, 34, 18), (1.2, 1.4, 2.0), "LPS", seed=2, oblique_deg=10)
    for config in ({"orientation": "RAS", "crop_foreground": True, "spacing_mm": [3, 2.5, 4]},
                   {"orientation": "RAS", "crop_foreground": True}):
        pre = Preprocessing.from_config(config)
        out = pre.apply(case.image)
        assert out.history.resamples == ("spacing_mm" in config)
        rng = np.random.default_rng(3)
        probs = rng.random((4,) + out.image.spatial_shape).astype(np.float32)
        probs = Probabilities(probs / probs.sum(axis=0), out.image.affine)
        expected = out.history.invert(probs).array.argmax(axis=0)
        labels = out.history.restore_labels(probs)
        assert isinstance(labels, LabelMap)
        assert labels.array.dtype == np.uint8 and labels.shape == case.image.shape
        np.testing.assert_array_equal(labels.affine, case.image.affine)
        np.testing.assert_array_equal(labels.array, expected)
