"""``evaluate_folders(lesions=...)`` and ``medseg evaluate --instances``: lesions.csv, summary."""

from __future__ import annotations

import contextlib
import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.evaluation import LESION_COLUMNS, evaluate_folders
from medseg.metrics import LesionOptions
from medseg.results import Results

AFFINE = np.diag((0.8, 0.8, 2.5, 1.0))
VOXEL_ML = 0.8 * 0.8 * 2.5 / 1000


def _save(array, path, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE), str(path))


@pytest.fixture
def folders(tmp_path):
    """case_a: label 2 split in two (1 TP, 1 FP) and a missed 1-voxel lesion (FN);
    case_b: label 2 found exactly; case_c: no label 2 anywhere (label 1 only)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    shape = (12, 8, 8)
    g, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    g[1:5, 1:3, 1:3] = 2                 # 16 voxels
    g[9, 6, 6] = 2                       # 1 voxel, missed
    p[1:3, 1:3, 1:3] = 2                 # 8 voxels: IoU 0.5, Dice 2/3
    p[4:5, 1:3, 1:3] = 2                 # 4 voxels: FP
    _save(g, gt / "case_a.nii.gz"), _save(p, pred / "case_a.nii.gz")
    g, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    g[2:4, 2:4, 2:4] = p[2:4, 2:4, 2:4] = 2
    _save(g, gt / "case_b.nii.gz"), _save(p, pred / "case_b.nii.gz")
    g, p = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    g[5:7, 5:7, 5:7] = p[5:7, 5:7, 5:7] = 1
    _save(g, gt / "case_c.nii.gz"), _save(p, pred / "case_c.nii.gz")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"1": "liver", "2": "tumour"}))
    return pred, gt, labels, tmp_path


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_lesions_csv_and_summary(folders):
    pred, gt, labels, tmp = folders
    out = tmp / "out" / "results.csv"
    _, summary = evaluate_folders(pred, gt, out, labels=labels,
                                  lesions=LesionOptions(("tumour",)))
    table = _read(out.parent / "lesions.csv")
    assert tuple(table[0]) == LESION_COLUMNS
    assert [(r["case"], r["label"], r["label_name"], r["lesion_id"], r["kind"], r["partner_id"])
            for r in table] == [
        ("case_a", "2", "tumour", "1", "tp", "1"), ("case_a", "2", "tumour", "2", "fn", ""),
        ("case_a", "2", "tumour", "2", "fp", ""), ("case_b", "2", "tumour", "1", "tp", "1")]
    first = table[0]
    assert float(first["volume_ml"]) == pytest.approx(16 * VOXEL_ML)
    assert float(first["partner_volume_ml"]) == pytest.approx(8 * VOXEL_ML)
    assert float(first["dice"]) == pytest.approx(2 / 3) and float(first["iou"]) == 0.5
    assert float(first["distance_mm"]) == pytest.approx(0.8)
    assert table[1]["distance_mm"] == "nan" and float(table[1]["dice"]) == 0.0

    entry = summary["lesions"]["labels"]["2"]
    # pooled over cases: TP 2 (Dice 2/3 and 1, IoU 0.5 and 1), FP 1, FN 1
    assert (entry["tp"], entry["fp"], entry["fn"]) == (2, 1, 1)
    assert entry["lesion_dice"] == pytest.approx((2 / 3 + 1) / 4)
    assert entry["sq"] == pytest.approx(0.75) and entry["f1"] == pytest.approx(4 / 6)
    assert entry["pq"] == pytest.approx(1.5 / 3)
    assert entry["precision"] == pytest.approx(2 / 3) and entry["recall"] == pytest.approx(2 / 3)
    # case_mean: case_a (2/3)/3 and case_b 1; case_c has no lesion: counted, not scored
    assert entry["case_mean"]["lesion_dice"] == pytest.approx(((2 / 9) + 1) / 2)
    assert entry["case_mean"]["n"] == 2
    assert (entry["n_cases"], entry["n_cases_without_lesions"]) == (3, 1)
    assert summary["lesions"]["match"] == "iou>0" and summary["lesions"]["connectivity"] == 26
    on_disk = json.loads((out.parent / "summary.json").read_text())
    assert on_disk["lesions"] == summary["lesions"]
    assert Results.load(out).summary["lesions"] == summary["lesions"]


def test_label_without_any_lesion_is_null_not_perfect(folders):
    pred, gt, labels, tmp = folders
    _, summary = evaluate_folders(pred, gt, tmp / "r.csv", labels=labels,
                                  lesions=LesionOptions((3,)))
    entry = summary["lesions"]["labels"]["3"]
    assert (entry["tp"], entry["fp"], entry["fn"], entry["n_cases_without_lesions"]) == (0, 0, 0, 3)
    assert all(entry[k] is None for k in ("precision", "recall", "f1", "lesion_dice", "sq", "pq"))
    assert entry["case_mean"] == {"lesion_dice": None, "f1": None, "pq": None, "n": 0}
    assert _read(tmp / "lesions.csv") == []


def test_without_instances_nothing_changes(folders):
    pred, gt, labels, tmp = folders
    _, summary = evaluate_folders(pred, gt, tmp / "r.csv", labels=labels, workers=2)
    assert "lesions" not in summary and not (tmp / "lesions.csv").exists()


def test_cli_instances_connectivity_and_match(folders):
    pred, gt, labels, tmp = folders
    out = tmp / "cli" / "results.csv"
    code = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--labels",
                 str(labels), "--workers", "2", "--instances", "tumour, 1",
                 "--connectivity", "6", "--match", "iou>0.5"])
    assert code == 0
    summary = json.loads((out.parent / "summary.json").read_text())["lesions"]
    assert summary["match"] == "iou>0.5" and summary["connectivity"] == 6
    # IoU 0.5 does not pass > 0.5: case_a has no match (FN 2, FP 2); case_b matches
    assert [summary["labels"]["2"][k] for k in ("tp", "fp", "fn")] == [1, 2, 2]
    assert [summary["labels"]["1"][k] for k in ("tp", "fp", "fn")] == [1, 0, 0]
    assert {r["label"] for r in _read(out.parent / "lesions.csv")} == {"1", "2"}


@pytest.mark.parametrize("extra, pattern", [
    (["--instances", "kidney"], r"--instances: 'kidney' is not a positive integer .* known "
                                r"names: liver, tumour"),
    (["--instances", "2.5"], r"--instances: '2\.5' is not a positive integer"),
    (["--instances", "2", "--match", "iou>=2"], r"--match must be 'iou>T'.*got 'iou>=2'"),
    (["--instances", "2", "--match", "dice>0"], r"--match must be .*got 'dice>0'"),
    (["--instances", "2", "--connectivity", "8"], r"argument --connectivity: invalid choice"),
    (["--instances", "2", "float"], r"pred/case_b\.nii\.gz: prediction holds non-integer label "
                                    r"0\.5"),
])
def test_bad_instance_input_one_line(folders, capsys, extra, pattern):
    pred, gt, labels, tmp = folders
    if extra[-1] == "float":
        extra = extra[:-1]
        bad = np.asarray(nib.load(pred / "case_b.nii.gz").dataobj).astype(np.float32)
        bad[0, 0, 0] = 0.5
        _save(bad, pred / "case_b.nii.gz", dtype=np.float32)
    out = tmp / "results.csv"
    with pytest.raises(SystemExit) if "--connectivity" in extra else contextlib.nullcontext():
        code = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out),
                     "--labels", str(labels), "--workers", "1", *extra])
        assert code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(pattern, err), err
    assert not out.exists() and not (tmp / "lesions.csv").exists()


def test_evaluate_case_lesions_and_missing_prediction(folders):
    from medseg.evaluation import evaluate_case_lesions

    pred, gt, _, _ = folders
    options = LesionOptions((2,), connectivity=6)
    found = evaluate_case_lesions(pred / "case_a.nii.gz", gt / "case_a.nii.gz", [2], options)[2]
    assert [(r.kind, r.lesion_id) for r in found.lesions] == [("tp", 1), ("fn", 2), ("fp", 2)]
    assert found.counts.dice_sum == pytest.approx(2 / 3)
    missing = evaluate_case_lesions(None, gt / "case_a.nii.gz", [2], options)[2]
    assert [r.kind for r in missing.lesions] == ["fn", "fn"]
    assert missing.counts.metrics()["recall"] == 0.0
