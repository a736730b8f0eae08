"""QC and calibration of a trained nnU-Net v2 model folder (2 folds, ``mean_logits``)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medseg.cli import main
from medseg.data.corrupt import inversion
from medseg.inference.predict import PredictOptions, predict_case
from medseg.io import read_volume
from medseg.runtime import Runtime
from medseg.sources import load_model
from medseg.sources.nnunet.load import CONFIDENCE_FILE
from nnunet_model import write_phantom_case

pytest.importorskip("nnunetv2")


def test_calibrate_nnunet_folder_then_qc_flags_an_inverted_image(nnunet_model, tmp_path):
    folder = shutil.copytree(nnunet_model, tmp_path / "model")  # the cache stays untouched
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(2):
        _, gt = write_phantom_case(images, f"c{i}", seed=400 + i)
        shutil.move(gt, labels / f"c{i}.nii.gz")
    assert main(["calibrate", f"nnunet:{folder}", "--images", str(images), "--labels",
                 str(labels), "--seed", "0"]) == 0
    assert (folder / CONFIDENCE_FILE).is_file()
    runtime = Runtime.resolve("cpu")
    loaded = load_model(f"nnunet:{folder}", runtime)
    assert loaded.is_ensemble and loaded.combine == "mean_logits"
    confidence = loaded.card.confidence
    assert confidence.cohort.cases == 2 and confidence.temperature > 0
    image = read_volume(images / "c0_0000.nii.gz")
    plain = predict_case(loaded, image, PredictOptions(), runtime)
    checked = predict_case(loaded, image, PredictOptions(qc=True, uncertainty=True), runtime)
    np.testing.assert_array_equal(checked.labels.array, plain.labels.array)  # exact: folds
    assert checked.qc.uncertainty.shape == (2,) + image.shape
    assert {row["flag"] for row in checked.qc.rows} <= {"ok", "review"}
    bad = predict_case(loaded, inversion(image), PredictOptions(qc=True), runtime)
    assert all(row["flag"] == "fail" for row in bad.qc.rows)
    assert all("image intensities unlike training" in row["reasons"] for row in bad.qc.rows)
