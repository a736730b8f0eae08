"""The card's confidence field: JSON round trip, old cards, and the cohort's measurements."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.card import ModelCard, NetworkSpec, WindowSettings
from medseg.confidence import (Cohort, Confidence, LabelReference, QcThresholds, Summary,
                               extent_measures, image_measures,
                               label_measures, large_components)
from medseg.errors import CheckpointError, UsageError


def _card(**kwargs) -> ModelCard:
    return ModelCard(NetworkSpec("unet3d", 1, 3, {"depth": 2}),
                     {"intensity": {"mode": "ct", "window": [-100, 300]}},
                     {1: "a", 2: "b"}, WindowSettings((16, 16, 16)), **kwargs)


def _cohort() -> Cohort:
    labels, images = _cohort_parts()
    return Cohort.of(labels, images, [1, 2], "CT")


def test_card_with_confidence_round_trips_through_json():
    card = _card(confidence=Confidence(_cohort(), QcThresholds(dice_review=0.9), 1.7))
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card
    assert again.confidence.cohort.labels[1].volume_ml.mean == pytest.approx(12.0)
    assert again.confidence.thresholds.dice_review == 0.9
    assert again.confidence.temperature == 1.7


def test_old_card_without_confidence_still_loads():
    data = _card().to_dict()
    assert "confidence" not in data
    assert ModelCard.from_dict(data).confidence is None


def test_bad_confidence_names_the_entry():
    data = _card().to_dict()
    data["confidence"] = {"temperature": -1}
    with pytest.raises(CheckpointError, match="temperature must be a positive number"):
        ModelCard.from_dict(data, "x.safetensors")
    with pytest.raises(UsageError, match="uncertain_probability"):
        QcThresholds(uncertain_probability=0.6)


def test_label_temperatures_round_trip_and_old_confidence_has_none():
    card = _card(confidence=Confidence(temperature=1.5, label_temperatures={2: 2.25}))
    data = json.loads(json.dumps(card.to_dict()))
    assert data["confidence"]["label_temperatures"] == {"2": 2.25}
    again = ModelCard.from_dict(data)
    assert again == card and again.confidence.temperatures(3) == (1.5, 1.5, 2.25)
    old = _card().to_dict()
    old["confidence"] = {"temperature": 1.7}  # a card written before label temperatures
    conf = ModelCard.from_dict(old).confidence
    assert conf.label_temperatures == {} and conf.temperatures(3) == 1.7
    old["confidence"] = {"temperature": 1.7, "label_temperatures": {"1": 0}}
    with pytest.raises(CheckpointError, match="temperature of label 1 must be a positive"):
        ModelCard.from_dict(old, "x.safetensors")


def test_summary_against_numpy():
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    s = Summary.of(values)
    assert (s.n, s.mean, s.min, s.max) == (5, 2.8, 1.0, 5.0)
    assert s.sd == pytest.approx(np.std(values, ddof=1))
    assert s.quantiles[0.5] == 3.0 and s.quantiles[0.25] == 1.0
    assert s.z(2.8 + 2 * s.sd) == pytest.approx(2.0)
    assert Summary.of([2.0]).z(2.0) == 0.0 and Summary.of([2.0]).z(3.0) == math.inf


def test_cohort_present_fraction_and_components():
    cohort = _cohort()
    assert cohort.labels[2].present == pytest.approx(1 / 3)
    assert cohort.labels[1].components.max == 2
    assert cohort.image[0]["p50"].mean == pytest.approx(20.0)


def test_label_measures_against_scipy():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[0:5, 0:5, 0:5] = 1  # 125 voxels
    labels[8:10, 8:10, 8:10] = 1  # 8 voxels: 6 % of the label, not large at 10 %
    labels[6:8, 0:3, 0:2] = 2  # 12 voxels
    measured = label_measures(labels, 0.002, [1, 2, 3])
    assert measured[1] == (pytest.approx(133 * 0.002), 1)
    assert measured[2] == (pytest.approx(12 * 0.002), 1)
    assert measured[3] == (0.0, 0)
    _, n = ndimage.label(labels == 1, np.ones((3, 3, 3)))
    assert n == 2 and large_components(labels == 1, 0.05) == 2


def test_image_measures_by_hand():
    array = np.arange(101, dtype=np.float32).reshape(101, 1, 1)  # 0..100: percentile p = p
    stats = image_measures(array, channels=False)[0]
    assert (stats["p01"], stats["p50"], stats["p99"]) == (1.0, 50.0, 99.0)
    assert stats["median_position"] == pytest.approx(49 / 98)
    skewed = array ** 2 / 100  # percentiles 1, 50, 99 at 0.01, 25, 98.01
    assert image_measures(skewed, False)[0]["median_position"] == pytest.approx(24.99 / 98)
    inverted = image_measures(100 - skewed, False)[0]  # 1.99, 75, 99.99: flips the position
    assert inverted["median_position"] == pytest.approx(73.01 / 98)
    assert image_measures(np.zeros((4, 4, 4)), False)[0]["median_position"] == 0.5


def test_extent_and_reference_round_trip_and_old_cohorts_have_no_extent():
    extents = [extent_measures(np.diag([0.5, 0.5, 2.0, 1.0]), (100 + 10 * i, 200, 30))
               for i in range(3)]
    labels, images = _cohort_parts()
    cohort = Cohort.of(labels, images, [1, 2], "CT", extents)
    assert cohort.extent["extent_lr"].mean == pytest.approx(55.0)  # 50, 55, 60 mm
    assert cohort.extent["extent_si"].sd == 0.0
    reference = {1: LabelReference(4, 0.035, Summary.of([0.5, 0.6, 0.7, 0.6]))}
    card = _card(confidence=Confidence(cohort, reference=reference))
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.confidence.reference[1].dice_offset == 0.035
    old = card.to_dict()
    del old["confidence"]["cohort"]["extent"], old["confidence"]["reference"]
    conf = ModelCard.from_dict(old).confidence
    assert conf.cohort.extent is None and conf.reference == {}


def _cohort_parts():
    labels = [{1: (10.0, 1), 2: (0.0, 0)}, {1: (14.0, 2), 2: (3.0, 1)}, {1: (12.0, 1), 2: (0.0, 0)}]
    images = [[{"p01": -1000.0 + i, "p50": 20.0 * i, "p99": 300.0, "median_position": 0.8}]
              for i in range(3)]
    return labels, images


def test_extent_of_an_oblique_image_by_hand():
    """A 90 degree turn about S swaps the voxel axes' world directions; 30 degrees gives the
    box around the rotated field of view: 100 x cos 30 + 50 x sin 30 along R-L."""
    turned = np.array([[0, -2.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    assert extent_measures(turned, (100, 25, 10)) == {"extent_lr": 50.0, "extent_ap": 100.0,
                                                     "extent_si": 30.0}
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    oblique = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    got = extent_measures(oblique, (100, 50, 1))
    assert got["extent_lr"] == pytest.approx(100 * c + 50 * s)
    assert got["extent_ap"] == pytest.approx(100 * s + 50 * c)
