"""QC, uncertainty maps and calibration on phantoms, with the hand-wired threshold network.

The threshold network (predict_helpers) labels a voxel by its own CT value, so the truth of
a noisy phantom is known exactly: the threshold labels of the same phantom without noise.
The cohort is measured from clean phantoms of other seeds.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import spearmanr

from medseg.confidence import (Cohort, Confidence, LabelReference, QcThresholds, Summary,
                               extent_measures, image_measures, label_measures)
from medseg.data.corrupt import CORRUPTIONS
from medseg.data.phantom import make_phantom
from medseg.inference.calibration import fit_temperature, sample_voxels
from medseg.inference.predict import PredictOptions, predict_case
from medseg.inference.qc import input_z, verdict
from medseg.runtime import Runtime
from medseg.sources.loaded import LoadedModel

from .predict_helpers import threshold_labels, threshold_model

SHAPE, SPACING = (40, 36, 20), (8.0, 9.0, 10.0)
CPU = Runtime.resolve("cpu")


def _case(seed: int, noise_hu: float):
    image = make_phantom(SHAPE, SPACING, seed=seed, noise_hu=noise_hu).image
    truth = threshold_labels(make_phantom(SHAPE, SPACING, seed=seed, noise_hu=0).image.array)
    return image, truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    labels, images, extents = [], [], []
    for seed in range(8):
        image, truth = _case(seed, 10)
        labels.append(label_measures(truth, image.voxel_volume_ml, [1, 2]))
        images.append(image_measures(image.array, False))
        extents.append(extent_measures(image.affine, image.spatial_shape))
    return Cohort.of(labels, images, [1, 2], "CT", extents)


@pytest.fixture(scope="module")
def model(cohort) -> LoadedModel:
    plain = threshold_model()
    return LoadedModel(plain.network, plain.card.replace(confidence=Confidence(cohort)))


def test_clean_cases_ok_and_estimates_close(model):
    flags, errors = [], []
    for seed in range(20, 26):
        image, truth = _case(seed, 10)
        result = predict_case(model, image, PredictOptions(qc=True), CPU)
        for row in result.qc.rows:
            flags.append(row["flag"])
            true = _dice(result.labels.array == row["label"], truth == row["label"])
            errors.append(abs(row["estimated_dice"] - true))
            assert row["volume_ml"] == pytest.approx(
                np.sum(result.labels.array == row["label"]) * image.voxel_volume_ml)
    assert flags.count("ok") >= 0.85 * len(flags)
    assert np.mean(errors) < 0.02  # noise 10 HU: the sharp network is nearly right


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_inputs_are_flagged(model, name):
    image, _ = _case(30, 10)
    result = predict_case(model, CORRUPTIONS[name](image, 0), PredictOptions(qc=True), CPU)
    flags = {row["flag"] for row in result.qc.rows}
    assert flags & {"review", "fail"}, result.qc.rows
    assert all(row["reasons"] for row in result.qc.rows if row["flag"] != "ok")


def test_a_smaller_field_of_view_is_flagged_and_a_larger_one_is_not(model, cohort):
    """Every cohort phantom spans 40 x 8 = 320 mm left-right (sd 0: the floor is 5 % of
    it, 16 mm): half of it is 160 mm short, z = -10, beyond input_z_fail (8)."""
    image, _ = _case(30, 10)
    z, stat, _ = input_z(CORRUPTIONS["half_fov"](image, 0), cohort, 0.05)
    assert (z, stat) == (pytest.approx(-10.0), "extent_lr")
    row = predict_case(model, CORRUPTIONS["half_fov"](image, 0), PredictOptions(qc=True),
                       CPU).qc.rows[0]
    assert row["flag"] == "fail"
    assert ("field of view 10.0 SD smaller than training along left-right (training 320 mm)"
            in row["reasons"])
    wide = make_phantom((80, 36, 20), SPACING, seed=30, noise_hu=10).image  # 640 mm
    z, stat, _ = input_z(wide, cohort, 0.05)
    assert not stat.startswith("extent") or z == 0.0


def test_uncertainty_and_estimate_are_judged_against_the_calibration_reference():
    """The reference's uncertain fractions 0.5, 0.6, 0.7 have mean 0.6 and sd 0.1: 0.95 is
    3.5 SD above (review at 3), 0.85 is 2.5 (ok); without a reference the fixed limit 0.5
    reviews both."""
    th = QcThresholds()
    reference = LabelReference(3, 0.04, Summary.of([0.5, 0.6, 0.7]))
    row = {"label": 1, "label_name": "a", "estimated_dice": 0.9, "volume_ml": 10.0,
           "components": 1, "volume_z": 0.0, "input_z": 0.0}
    flag, reasons = verdict({**row, "uncertain_fraction": 0.95}, th, reference=reference)
    assert flag == "review" and reasons == [
        "95% of the structure uncertain (3.5 SD above the calibration cases' 60%)"]
    assert verdict({**row, "uncertain_fraction": 0.85}, th, reference=reference) == ("ok", [])
    assert verdict({**row, "uncertain_fraction": 0.85}, th)[0] == "review"


def test_estimated_dice_follows_true_dice_once_calibrated(model):
    """Calibrated on noise-30 cases (the sharp network is overconfident), the estimate of
    the dense label falls with its true Dice as the noise grows. (The soft-tissue label, a
    thin band of CT values, does not follow: a voxel-wise network's probabilities do not see
    the noise that moves voxels across the band; QC can only be as good as them.)"""
    rng = np.random.default_rng(0)
    samples = []
    for seed in (1, 2, 3):
        image, truth = _case(seed, 30)
        probs = predict_case(model, image, PredictOptions(save_probabilities=True), CPU)
        samples.append(sample_voxels(probs.probabilities.array, truth, image.spacing_mm, rng))
    temperature = fit_temperature(np.concatenate([s[0] for s in samples]),
                                  np.concatenate([s[1] for s in samples]))
    assert temperature > 2  # overconfident
    calibrated = LoadedModel(model.network, model.card.replace(
        confidence=model.card.confidence.replace(temperature=temperature)))
    est, true = [], []
    for i, noise in enumerate([0, 10, 20, 30, 40, 50, 60, 80]):
        image, truth = _case(40 + i, noise)
        result = predict_case(calibrated, image, PredictOptions(qc=True), CPU)
        row = result.qc.rows[1]
        est.append(row["estimated_dice"])
        true.append(_dice(result.labels.array == 2, truth == 2))
    assert true[0] > 0.95 and true[-1] < 0.9  # the set spans better and worse cases
    assert spearmanr(est, true).statistic >= 0.9
    assert np.mean(np.abs(np.subtract(est, true))) < 0.1


def test_qc_labels_equal_plain_prediction_and_uncertainty_on_input_grid(model):
    image = make_phantom((30, 28, 14), (8.0, 9.0, 10.0), orientation="LPS", seed=2,
                         noise_hu=20, oblique_deg=10).image
    plain = predict_case(model, image, PredictOptions(), CPU)
    for tta in (False, True):
        result = predict_case(model, image, PredictOptions(qc=True, uncertainty=True, tta=tta),
                              CPU)
        np.testing.assert_array_equal(result.labels.array, plain.labels.array)
        u = result.qc.uncertainty
        assert u.array.dtype == np.float16 and u.shape == (2,) + image.shape
        np.testing.assert_array_equal(u.affine, image.affine)
        assert 0.0 <= float(u.array.min()) and float(u.array.max()) <= 1.0
    # a voxel-wise network: every mirroring agrees, so the members' disagreement is ~0 and
    # the entropy is that of the one softmax: log K normalised, by hand at one voxel
    probs = predict_case(model, image, PredictOptions(save_probabilities=True),
                         CPU).probabilities.array
    entropy = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(0) / np.log(3)
    assert float(u.array[1].max()) < 1e-3
    np.testing.assert_allclose(u.array[0], entropy, atol=2e-3)


def test_cli_predict_qc_csv_evaluate_and_missing_cohort_warning(tmp_path, threshold_ckpt,
                                                                capsys):
    from medseg.cli import main
    from medseg.io import write_volume

    images, labels = tmp_path / "images", tmp_path / "labels"
    for seed, noise in ((1, 10), (2, 60), (3, 120)):
        image, truth = _case(seed, noise)
        write_volume(image, images / f"c{seed}.nii.gz")
        write_volume(image.with_array(truth), labels / f"c{seed}.nii.gz")
    assert main(["predict", "-m", str(threshold_ckpt), "-i", str(images), "-o",
                 str(tmp_path / "pred"), "--qc"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "training cohort" in line]
    assert len(warnings) == 1 and "volume_z and input_z are empty" in warnings[0]
    with (tmp_path / "pred" / "qc.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["c1", "c1", "c2", "c2", "c3", "c3"]
    assert all(r["volume_z"] == "" and r["input_z"] == "" for r in rows)
    assert main(["predict", "-m", str(threshold_ckpt), "-i", str(images / "c1.nii.gz"), "-o",
                 str(tmp_path / "one" / "c1.nii.gz"), "--save-uncertainty"]) == 0
    assert (tmp_path / "one" / "c1_uncertainty.nii.gz").is_file()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(labels), "-o",
                 str(tmp_path / "eval" / "results.csv"), "--qc",
                 str(tmp_path / "pred" / "qc.csv"), "--workers", "1"]) == 0
    import json

    qc = json.loads((tmp_path / "eval" / "qc_evaluation.json").read_text())
    assert qc["joined"] == 6 and qc["n"] == 6


def test_calibrate_cli_writes_cohort_and_temperature(tmp_path, ckpt_dir):
    from medseg.checkpoint import load_checkpoint
    from medseg.cli import main
    from medseg.io import write_volume

    from .predict_helpers import save_threshold_checkpoint

    ckpt = save_threshold_checkpoint(tmp_path / "model.safetensors")
    images, labels = tmp_path / "images", tmp_path / "labels"
    for seed in range(3):
        image, truth = _case(seed, 25)  # noisy: the sharp network is overconfident
        write_volume(image, images / f"c{seed}.nii.gz")
        write_volume(image.with_array(truth), labels / f"c{seed}.nii.gz")
    report = tmp_path / "calibration.json"
    assert main(["calibrate", str(ckpt), "--images", str(images), "--labels", str(labels),
                 "--report", str(report)]) == 0
    card = load_checkpoint(ckpt).card
    assert card.confidence.cohort.cases == 3
    assert card.confidence.temperature > 1.5  # overconfident: probabilities flattened
    import json

    result = json.loads(report.read_text())
    assert result["ece_after"] < result["ece_before"]
    assert result["temperature"] == pytest.approx(card.confidence.temperature)
    # every label was weighed for its own temperature on held-out cases; the kept ones are
    # in the card
    assert [c["label"] for c in result["labels"]] == [0, 1, 2]
    assert card.confidence.label_temperatures == pytest.approx(
        {int(k): v for k, v in result["label_temperatures"].items()})
    assert result["ece_after"] <= result["ece_single"] or not result["label_temperatures"]
    # QC's reference: per label, the median of (true Dice - soft Dice) over the three cases,
    # measured here by hand with the calibrated model without its reference
    raw = LoadedModel(threshold_model().network, card.replace(
        confidence=card.confidence.replace(reference={})))
    withref = LoadedModel(raw.networks, card)
    gaps: dict[int, list[float]] = {1: [], 2: []}
    for seed in range(3):
        image, truth = _case(seed, 25)
        plain = predict_case(raw, image, PredictOptions(qc=True), CPU)
        corrected = predict_case(withref, image, PredictOptions(qc=True), CPU)
        for row, fixed in zip(plain.qc.rows, corrected.qc.rows):
            label = row["label"]
            gap = _dice(plain.labels.array == label, truth == label) - row["estimated_dice"]
            gaps[label].append(gap)
            offset = card.confidence.reference[label].dice_offset
            assert fixed["estimated_dice"] == pytest.approx(
                min(1.0, max(0.0, row["estimated_dice"] + offset)))
    for label, gap in gaps.items():
        ref = card.confidence.reference[label]
        assert ref.cases == 3 and ref.dice_offset == pytest.approx(float(np.median(gap)))
        assert result["reference"][str(label)]["dice_offset"] == pytest.approx(ref.dice_offset)


def test_a_calibrated_model_tempers_its_probabilities_on_the_input_grid():
    """The card's temperatures are applied where ``calibrate`` fits them: to the
    probabilities resampled to the input grid, softmax(log p / T) by hand with T of each
    voxel's label (tempering on the network grid, before the linear resampling, gives other
    probabilities); the labels are the uncalibrated model's."""
    plain = threshold_model(spacing_mm=(5.0, 6.0, 7.0))  # the phantom's 8 x 9 x 10 mm
    calibrated = LoadedModel(plain.network, plain.card.replace(confidence=Confidence(
        temperature=2.0, label_temperatures={1: 3.0})))
    image = make_phantom(SHAPE, SPACING, seed=3, noise_hu=40).image
    options = PredictOptions(save_probabilities=True)
    before = predict_case(plain, image, options, CPU)
    after = predict_case(calibrated, image, options, CPU)
    np.testing.assert_array_equal(after.labels.array, before.labels.array)
    z = np.log(np.clip(before.probabilities.array.astype(np.float64), 1e-30, None))
    z /= np.array([2.0, 3.0, 2.0])[z.argmax(0)][None]
    expected = np.exp(z - z.max(0))
    expected /= expected.sum(0)
    assert np.abs(expected - before.probabilities.array).max() > 0.1
    np.testing.assert_allclose(after.probabilities.array, expected, atol=1e-5)
