"""The report's confidence sections: QC rows by risk with the true Dice, error beside
uncertainty overlays of the flagged cases, and the calibration (ECE, reliability diagram)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from medseg.cli import main
from medseg.metrics.calibration import Reliability, expected_calibration_error, reliability
from medseg.report import write_report
from medseg.report.qc import risk_order
from report_html import parse_report

QC_COLUMNS = ("case", "label", "label_name", "estimated_dice", "flag", "reasons")
#: (case, label, estimated Dice, flag, reasons) of a hand-made QC table of the phantoms
QC = [
    ("case_000", 1, "0.91", "ok", ""),
    ("case_000", 2, "0.97", "ok", ""),
    ("case_001", 2, "0.70", "review", "estimated Dice 0.70"),
    ("case_001", 4, "0.55", "review", "2 large components"),
    ("case_002", 5, "", "fail", "predicted empty; present in 100 % of training cases"),
    ("case_002", 3, "0.40", "fail", "volume 6.1 SD above training"),
    ("case_003", 1, "0.80", "review", "estimated Dice 0.80"),
    ("other", 1, "0.10", "fail", "not evaluated"),
]
#: the same rows riskiest first: fail < review < ok, a missing estimate first in its flag
RISK_ORDER = [("case_002", 5), ("case_002", 3), ("case_001", 4), ("case_001", 2),
              ("case_003", 1), ("case_000", 1), ("case_000", 2)]


def _write_qc(path):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(QC_COLUMNS)
        for case, label, estimate, flag, reasons in QC:
            writer.writerow([case, label, f"name{label}", estimate, flag, reasons])
    return path


@pytest.fixture
def dataset(phantom_dataset, tmp_path):
    """A copy of the phantom dataset (pred/ gets side outputs here, not in the shared one)."""
    for key in ("images", "gt", "pred"):
        shutil.copytree(phantom_dataset[key], tmp_path / key)
    shutil.copy(phantom_dataset["results"], tmp_path / "results.csv")
    return {"root": tmp_path, "rows": phantom_dataset["rows"],
            **{k: tmp_path / k for k in ("images", "gt", "pred")}}


def test_risk_table_in_risk_order_with_true_dice_and_overlays(dataset):
    import nibabel as nib

    ds = dataset
    pred_img = nib.load(ds["pred"] / "case_001.nii.gz")
    uncertainty = np.random.default_rng(0).random(pred_img.shape + (2,)).astype(np.float32)
    nib.save(nib.Nifti1Image(uncertainty, pred_img.affine),
             ds["pred"] / "case_001_uncertainty.nii.gz")
    out = ds["root"] / "report.html"
    from medseg.report import WorstCases

    write_report(ds["root"] / "results.csv", out, qc=_write_qc(ds["root"] / "qc.csv"),
                 worst=WorstCases(0, ds["images"], ds["pred"], ds["gt"]))
    parsed = parse_report(out)
    table = parsed.tables["qc-risk"]
    assert table["head"] == ["Risk", "Case", "Label", "Name", "Flag", "Estimated Dice",
                             "True Dice", "Reasons"]
    assert [(r[1][0], int(r[2][0])) for r in table["rows"]] == RISK_ORDER
    true = {(r["case"], r["label"]): r["dice"] for r in ds["rows"]}
    given = {(c, lab): (est, flag, reasons) for c, lab, est, flag, reasons in QC}
    for row in table["rows"]:
        key = (row[1][0], int(row[2][0]))
        estimate, flag, reasons = given[key]
        assert row[4][0] == flag and row[7][0] == reasons and row[3][0] == f"name{key[1]}"
        assert float(row[5][1]) == (float(estimate) if estimate else pytest.approx(np.nan,
                                                                                   nan_ok=True))
        assert float(row[6][1]) == pytest.approx(true[key], rel=1e-12)
    ids = {img["id"] for img in parsed.images}
    # flagged cases: the error overlay, and the uncertainty one where the map exists
    assert {"qc-error-case_001", "qc-uncertainty-case_001", "qc-error-case_002",
            "qc-error-case_003"} <= ids
    assert "qc-uncertainty-case_002" not in ids and "qc-error-case_000" not in ids
    assert "qc-error-other" not in ids
    html = out.read_text()
    assert "No uncertainty map" in html and "href=\"#qc\"" in html
    assert "href=\"#calibration\"" not in html  # no calibration input: no section


def test_risk_order_sorts_flags_then_estimates():
    rows = [{"case": "a", "label": 1, "flag": "ok", "estimated_dice": 0.2},
            {"case": "b", "label": 1, "flag": "review", "estimated_dice": 0.9},
            {"case": "c", "label": 1, "flag": "review", "estimated_dice": float("nan")},
            {"case": "d", "label": 1, "flag": "fail", "estimated_dice": 0.95}]
    assert [r["case"] for r in sorted(rows, key=risk_order)] == ["d", "c", "b", "a"]


def _probability_case(seed: int, shape=(24, 22, 16)):
    """A ball label map and softmax probabilities of 3 classes that agree with it more or
    less confidently (overconfident noise)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    centre = np.array(shape)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    gt = np.where(r < 4, 2, np.where(r < 7, 1, 0)).astype(np.uint8)
    logits = 4.0 * np.eye(3)[gt].transpose(3, 0, 1, 2) + rng.normal(0, 2.5, (3, *shape))
    p = np.exp(logits - logits.max(0))
    return gt, (p / p.sum(0)).astype(np.float32)


def test_evaluate_writes_the_ece_of_saved_probabilities_and_the_report_prints_it(tmp_path):
    """``medseg evaluate --report`` on predictions with ``<case>_probabilities``: the ECE in
    reliability.json and in the report equals metrics.calibration's on the voxels within
    5 mm of foreground, pooled; a calibration report's before/after ECE are printed as
    they are."""
    from medseg.io import write_volume
    from medseg.volume import Volume

    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    spacing = (2.0, 2.5, 3.0)
    pred, gt_dir = tmp_path / "pred", tmp_path / "gt"
    chosen, truths = [], []
    for seed in range(2):
        gt, p = _probability_case(seed)
        write_volume(Volume(gt, affine), gt_dir / f"c{seed}.nii.gz")
        write_volume(Volume(p.argmax(0).astype(np.uint8), affine), pred / f"c{seed}.nii.gz")
        write_volume(Volume(p, affine), pred / f"c{seed}_probabilities.nii.gz")
        foreground = (p.argmax(0) > 0) | (gt > 0)
        near = ndimage.distance_transform_edt(~foreground, sampling=spacing) <= 5.0
        chosen.append(p[:, near].T)
        truths.append(gt[near])
    expected = expected_calibration_error(np.concatenate(chosen), np.concatenate(truths))
    before = reliability(np.concatenate(chosen) ** 0.5 / 2, np.concatenate(truths))
    calibration = {"temperature": 1.7, "label_temperatures": {"2": 2.4}, "cases": 2,
                   "reliability_before": before.to_dict(),
                   "reliability_after": reliability(np.concatenate(chosen),
                                                    np.concatenate(truths)).to_dict()}
    (tmp_path / "calibration.json").write_text(json.dumps(calibration))
    out = tmp_path / "eval" / "results.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt_dir), "-o", str(out),
                 "--workers", "1", "--report", "--calibration",
                 str(tmp_path / "calibration.json")]) == 0
    written = json.loads((out.parent / "reliability.json").read_text())
    assert written["cases"] == 2 and written["ece"] == pytest.approx(expected, rel=1e-9)
    assert written["voxels"] == sum(len(t) for t in truths)
    parsed = parse_report(out.parent / "report.html")
    rows = {r[0][0]: r for r in parsed.tables["calibration-table"]["rows"]}
    assert float(rows["evaluated cases"][1][1]) == pytest.approx(expected, rel=1e-9)
    assert float(rows["before calibration"][1][1]) == pytest.approx(before.ece, rel=1e-12)
    assert float(rows["after calibration"][1][1]) == pytest.approx(expected, rel=1e-9)
    assert before.ece > 0.1 and expected < before.ece
    assert any(img["id"] == "plot-reliability" for img in parsed.images)
    assert "labels with their own: 2: 2.400" in (out.parent / "report.html").read_text()


def test_pooled_reliability_equals_that_of_all_voxels():
    gt, p = _probability_case(3)
    flat, y = p.reshape(3, -1).T, gt.ravel()
    halves = [reliability(flat[:1000], y[:1000]), reliability(flat[1000:], y[1000:])]
    pooled, whole = Reliability.pooled(halves), reliability(flat, y)
    np.testing.assert_array_equal(pooled.counts, whole.counts)
    np.testing.assert_allclose(pooled.accuracy, whole.accuracy, equal_nan=True)
    assert pooled.ece == pytest.approx(whole.ece, rel=1e-12)
    again = Reliability.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert again.ece == whole.ece
