"""medseg.evaluation and ``medseg evaluate``: pairing, CSV/summary content, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.evaluation import RESULT_COLUMNS, evaluate_folders
from medseg.io.cases import read_label_names
from medseg.metrics import evaluate_arrays

SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag(SPACING + (1.0,))


def _ball(centre, radius, shape=(30, 30, 20)):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, SPACING)) <= radius**2


def _save(array, path, affine=AFFINE, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), str(path))


@pytest.fixture
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for i, shift in enumerate((0, 2)):
        g = _ball((15, 15, 10), 8).astype(np.uint8)
        g[_ball((15, 15, 3), 4)] = 2
        p = np.roll(g, shift, axis=0)
        if i == 1:
            p[p == 2] = 0  # structure 2 missed in case_1
        _save(g, gt / f"case_{i}.nii.gz")
        _save(p, pred / f"case_{i}.nii.gz")
    return pred, gt, tmp_path


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folders_rows_and_summary(folders):
    pred, gt, tmp = folders
    labels = tmp / "labels.json"
    labels.write_text(json.dumps({"1": "liver", "2": "tumour", "3": "spleen"}))
    rows, summary = evaluate_folders(pred, gt, tmp / "results.csv", labels=labels, workers=2)
    table = _read(tmp / "results.csv")
    assert list(table[0]) == list(RESULT_COLUMNS)
    assert [(r["case"], r["label"], r["status"]) for r in table] == [
        ("case_0", "1", "ok"), ("case_0", "2", "ok"), ("case_0", "3", "both_empty"),
        ("case_1", "1", "ok"), ("case_1", "2", "empty_pred"), ("case_1", "3", "both_empty"),
    ]
    assert table[4]["hd_mm"] == "inf" and table[4]["dice"] == "0.0" and table[1]["label_name"] == "tumour"
    # each row equals evaluate_arrays on the same arrays
    g = np.asarray(nib.load(gt / "case_1.nii.gz").dataobj)
    p = np.asarray(nib.load(pred / "case_1.nii.gz").dataobj)
    ref = evaluate_arrays(p, g, SPACING, labels=[1, 2, 3])
    assert float(table[3]["hd95_mm"]) == pytest.approx(ref[1]["hd95_mm"], rel=1e-6)  # float32 affine
    # a missed structure stays in the summary: counted by status and as n_inf
    tumour = json.loads((tmp / "summary.json").read_text())["labels"]["2"]
    assert tumour["status"] == {"ok": 1, "empty_pred": 1, "empty_gt": 0, "both_empty": 0}
    assert tumour["metrics"]["hd_mm"]["n_inf"] == 1 and tumour["metrics"]["hd_mm"]["n"] == 1
    assert tumour["metrics"]["dice"]["mean"] == pytest.approx((ref[2]["dice"] + 1.0) / 2)
    # both_empty rows (label 3, Dice 1 by the medseg convention) are left out of the means
    dices = [float(r["dice"]) for r in table if r["status"] != "both_empty"]
    assert summary["overall"]["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["overall"]["status"]["both_empty"] == 2
    srows = _read(tmp / "summary.csv")
    assert {r["label"] for r in srows} == {"1", "2", "3", "all", "all_cases"}


def test_cli_two_files_monai_convention(folders, capsys):
    pred, gt, tmp = folders
    out = tmp / "one.csv"
    code = main(["evaluate", "--pred", str(pred / "case_0.nii.gz"), "--gt", str(gt / "case_0.nii.gz"),
                 "-o", str(out), "--convention", "monai", "--nsd-tolerance", "2", "--workers", "1"])
    assert code == 0
    table = _read(out)
    assert [r["label"] for r in table] == ["1", "2"] and {r["case"] for r in table} == {"case_0"}
    assert (tmp / "summary.csv").exists() and (tmp / "summary.json").exists()


def test_evaluate_into_a_new_folder(folders):
    pred, gt, tmp = folders
    out = tmp / "new" / "dir" / "results.csv"
    assert _run_cli(pred, gt, out) == 0
    assert [r["case"] for r in _read(out)] == ["case_0", "case_0", "case_1", "case_1"]
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["n_cases"] == 2 and (out.parent / "summary.csv").is_file()
    dices = {r["case"]: [float(x["dice"]) for x in _read(out) if x["case"] == r["case"]]
             for r in _read(out)}
    assert summary["cases"] == pytest.approx({c: float(np.mean(d)) for c, d in dices.items()})


def test_evaluate_output_folder_that_cannot_be_created(folders, capsys):
    pred, gt, tmp = folders
    (tmp / "a_file").write_text("x")
    assert _run_cli(pred, gt, tmp / "a_file" / "results.csv") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_file/results.csv: cannot create the output folder" in err


def test_label_file_formats(tmp_path):
    ts = tmp_path / "a.json"
    ts.write_text('{"1": "spleen", "2": "kidney_right"}')
    msd1 = tmp_path / "b.json"
    msd1.write_text('{"name": "x", "labels": {"0": "background", "1": "liver"}}')
    msd2 = tmp_path / "c.json"
    msd2.write_text('{"labels": {"background": 0, "liver": 1, "tumour": 2}}')
    assert read_label_names(ts) == {0: "background", 1: "spleen", 2: "kidney_right"}
    assert read_label_names(msd1) == {0: "background", 1: "liver"}
    assert read_label_names(msd2) == {0: "background", 1: "liver", 2: "tumour"}


def test_real_labels_json_format():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / ".." / "shared/data/totalsegmentator/labels.json"
    if not path.exists():
        pytest.skip("real data not found at ../shared/data/totalsegmentator")
    names = read_label_names(path)
    assert names[1] == "spleen" and len(names) > 41


def _run_cli(pred, gt, out, *extra):
    return main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--workers", "1", *extra])


@pytest.mark.parametrize(
    "breakage, pattern",
    [
        ("shape", r"case_1\.nii\.gz.*shape \(30, 30, 20\).*gt/case_1\.nii\.gz.*\(30, 30, 21\)"),
        ("affine", r"pred/case_1\.nii\.gz: prediction affine differs from ground truth .*gt/case_1"),
        ("float", r"pred/case_1\.nii\.gz: prediction holds non-integer label 0\.5"),
        ("negative", r"pred/case_1\.nii\.gz: prediction holds negative label -3"),
        ("nan", r"pred/case_1\.nii\.gz: prediction holds NaN"),
        ("missing", r"unpaired cases: 1 without a prediction .*: case_1"),
        ("unreadable", r"pred/case_1\.nii\.gz"),
    ],
)
def test_bad_input_one_line_error_no_csv(folders, capsys, breakage, pattern):
    pred, gt, tmp = folders
    target = pred / "case_1.nii.gz"
    g = np.asarray(nib.load(gt / "case_1.nii.gz").dataobj)
    if breakage == "shape":
        _save(np.zeros((30, 30, 21)), gt / "case_1.nii.gz")
    elif breakage == "affine":
        shifted = AFFINE.copy()
        shifted[0, 3] = 0.01
        _save(g, target, affine=shifted)
    elif breakage in ("float", "negative", "nan"):
        bad = g.astype(np.float32)
        bad[0, 0, 0] = {"float": 0.5, "negative": -3.0, "nan": np.nan}[breakage]
        _save(bad, target, dtype=np.float32)
    elif breakage == "missing":
        target.unlink()
    else:
        target.write_bytes(b"not a nifti")
    out = tmp / "results.csv"
    assert _run_cli(pred, gt, out) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("medseg: error:")
    import re

    assert re.search(pattern, err), err
    assert not out.exists() and not (tmp / "summary.csv").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]


def test_missing_as_empty(folders):
    pred, gt, tmp = folders
    (pred / "case_1.nii.gz").unlink()
    rows, _ = evaluate_folders(pred, gt, tmp / "r.csv", missing_as_empty=True)
    assert [(r["case"], r["status"]) for r in rows if r["case"] == "case_1"] == [
        ("case_1", "empty_pred"), ("case_1", "empty_pred")]


def test_unpaired_prediction_is_listed(folders):
    pred, gt, tmp = folders
    _save(np.zeros((30, 30, 20)), pred / "extra.nii.gz")
    from medseg.errors import UsageError

    with pytest.raises(UsageError, match="1 without a ground truth .*: extra"):
        evaluate_folders(pred, gt, tmp / "r.csv")


def test_probabilities_and_uncertainty_maps_beside_predictions_are_not_cases(folders):
    """``medseg predict --save-probabilities --save-uncertainty`` writes
    ``<case>_probabilities`` / ``<case>_uncertainty`` beside ``<case>``: they are skipped, and
    the scores are those without them; a ``*_uncertainty`` file without its case is still
    an unpaired prediction."""
    pred, gt, tmp = folders
    plain, _ = evaluate_folders(pred, gt, tmp / "plain.csv")
    for i in range(2):
        _save(np.random.default_rng(i).random((2, 30, 30, 20)),
              pred / f"case_{i}_probabilities.nii.gz", dtype=np.float32)
        _save(np.ones((30, 30, 20)), pred / f"case_{i}_uncertainty.nii.gz", dtype=np.float32)
    rows, summary = evaluate_folders(pred, gt, tmp / "r.csv")
    assert summary["n_cases"] == 2
    assert [(r["case"], r["label"], r["dice"]) for r in rows] == [
        (r["case"], r["label"], r["dice"]) for r in plain]
    _save(np.ones((30, 30, 20)), pred / "other_uncertainty.nii.gz")
    from medseg.errors import UsageError

    with pytest.raises(UsageError, match="1 without a ground truth .*: other_uncertainty"):
        evaluate_folders(pred, gt, tmp / "r.csv")


# -- the both-empty policy -------------------------------------------------------------------------
def test_include_both_empty_keyword_and_options(folders):
    from medseg.evaluation import EvaluateOptions

    pred, gt, tmp = folders
    labels = {1: "liver", 2: "tumour", 3: "spleen"}
    _, new = evaluate_folders(pred, gt, tmp / "a.csv", labels=labels)
    _, old = evaluate_folders(pred, gt, tmp / "b.csv", labels=labels, include_both_empty=True)
    _, same = evaluate_folders(pred, gt, tmp / "c.csv", labels,
                               EvaluateOptions(include_both_empty=True))
    table = _read(tmp / "b.csv")
    assert old["overall"]["metrics"]["dice"]["mean"] == pytest.approx(
        np.mean([float(r["dice"]) for r in table]))  # the two both_empty rows count as 1
    present = [float(r["dice"]) for r in table if r["status"] != "both_empty"]
    assert new["overall"]["metrics"]["dice"]["mean"] == pytest.approx(np.mean(present))
    assert same["overall"] == old["overall"] and same["both_empty_policy"] == old[
        "both_empty_policy"] != new["both_empty_policy"]
    case_means = [np.mean([float(r["dice"]) for r in table
                           if r["case"] == c and r["status"] != "both_empty"])
                  for c in ("case_0", "case_1")]
    assert new["overall"]["case_mean"]["dice"]["mean"] == pytest.approx(np.mean(case_means))
    written = json.loads((tmp / "summary.json").read_text())
    assert written["both_empty_policy"] == old["both_empty_policy"]  # c.csv was written last


def test_unknown_option_keyword_names_the_closest(folders):
    from medseg.errors import UsageError

    pred, gt, tmp = folders
    with pytest.raises(UsageError, match="unknown option 'include_both_empties'.*did you mean "
                                         "'include_both_empty'"):
        evaluate_folders(pred, gt, tmp / "r.csv", include_both_empties=True)
    with pytest.raises(UsageError, match="options must be an EvaluateOptions, got str"):
        evaluate_folders(pred, gt, tmp / "r.csv", None, "monai")
    with pytest.raises(UsageError, match="workers must be >= 1, got 0"):
        evaluate_folders(pred, gt, tmp / "r.csv", workers=0)
    assert not (tmp / "r.csv").exists()


TOTALSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator"


def _fast_vs_full(tmp):
    """A 'full' model (seg.nii.gz) and a 'fast'-like one: labels dilated, eroded, one missed."""
    from scipy import ndimage

    image = nib.load(TOTALSEG / "seg.nii.gz")
    full = np.asarray(image.dataobj).astype(np.uint8)
    fast = full.copy()
    for i, value in enumerate(v for v in np.unique(full) if v):
        mask = full == value
        if i % 2 == 0:
            fast[ndimage.binary_dilation(mask) & (full == 0)] = value
        elif mask.sum() > 500:
            fast[mask & ~ndimage.binary_erosion(mask)] = 0
    fast[full == 4] = 0  # the gallbladder, missed entirely
    for folder, array in (("full", full), ("fast", fast)):
        (tmp / folder).mkdir()
        _save(array, tmp / folder / "s0011.nii.gz", affine=image.affine)
    return tmp / "fast", tmp / "full"


@pytest.mark.skipif(not (TOTALSEG / "seg.nii.gz").is_file(),
                    reason=f"real TotalSegmentator data absent at {TOTALSEG}")
def test_totalsegmentator_fast_vs_full_mean_over_present_structures(tmp_path, capsys):
    fast, full = _fast_vs_full(tmp_path)
    labels = str(TOTALSEG / "labels.json")  # 117 names, 41 present
    assert _run_cli(fast, full, tmp_path / "new" / "results.csv", "--labels", labels) == 0
    printed = capsys.readouterr().err
    table = _read(tmp_path / "new" / "results.csv")
    statuses = [r["status"] for r in table]
    assert len(table) == 117 and statuses.count("both_empty") == 117 - 41
    missed = [r for r in table if r["status"] == "empty_pred"]
    assert [(r["label_name"], float(r["dice"])) for r in missed] == [("gallbladder", 0.0)]
    present = [float(r["dice"]) for r in table if r["status"] != "both_empty"]
    hits = [float(r["dice"]) for r in table if r["status"] == "ok"]
    summary = json.loads((tmp_path / "new" / "summary.json").read_text())
    mean = summary["overall"]["metrics"]["dice"]["mean"]
    assert len(present) == 41 and mean == pytest.approx(sum(present) / 41)
    assert mean < np.mean(hits)  # the missed structure lowers it
    assert summary["overall"]["case_mean"]["dice"]["mean"] == pytest.approx(mean)  # one case
    assert f"mean Dice {mean:.4f} over 41 (case, label) rows" in printed
    assert f"policy: {summary['both_empty_policy']}" in printed

    assert _run_cli(fast, full, tmp_path / "old" / "results.csv", "--labels", labels,
                    "--include-both-empty") == 0
    old = json.loads((tmp_path / "old" / "summary.json").read_text())
    old_mean = old["overall"]["metrics"]["dice"]["mean"]
    assert old_mean == pytest.approx((sum(present) + 76 * 1.0) / 117)  # both_empty: Dice 1
    assert old_mean > mean + 0.05
    assert f"mean Dice {old_mean:.4f} over 117 (case, label) rows" in capsys.readouterr().err


def test_dicom_seg_ground_truth_with_reference(tmp_path):
    """A DICOM-SEG ground truth is read onto its --reference series' grid: dcmqi's liver SEG
    against its own NRRD export scores Dice 1 (the same voxels), and without --reference the
    one-line error says what is needed."""
    import pytest as _pytest

    from medseg.cli import main

    data = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom_samples"
    seg, series = data / "dcmqi" / "liver.dcm", data / "dcmqi" / "ct-3slice"
    if not seg.is_file():
        _pytest.skip(f"dcmqi samples not available at {data}")
    from medseg.io import read_volume, write_volume
    from medseg.io.labels import read_labels

    labels = read_labels(seg, reference=series)
    pred = write_volume(read_volume(series).with_array(labels.array), tmp_path / "pred.nii.gz")
    out = tmp_path / "eval" / "results.csv"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(seg), "--reference", str(series),
                 "-o", str(out), "--workers", "1"]) == 0
    rows = [r for r in csv.DictReader(out.open()) if r["status"] != "both_empty"]
    assert rows and all(float(r["dice"]) == 1.0 for r in rows)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(seg), "-o",
                 str(tmp_path / "e2" / "results.csv")]) == 2


def test_failed_evaluation_into_a_new_folder_leaves_nothing(tmp_path, capsys):
    """The output folder is checked before scoring but created only when results are written:
    bad input (a NaN label) gives one line, exit 1 and no new folder."""
    from medseg.cli import main

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    gt = np.zeros((6, 6, 4), np.float32)
    gt[1:4, 1:4, 1:3] = 1
    nib.save(nib.Nifti1Image(gt, affine), tmp_path / "gt.nii.gz")
    bad = gt.copy()
    bad[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad, affine), tmp_path / "pred.nii.gz")
    out = tmp_path / "new" / "deeper" / "results.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--gt",
                 str(tmp_path / "gt.nii.gz"), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pred.nii.gz: prediction holds NaN" in err[0]
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    assert main(["evaluate", "--pred", str(tmp_path / "gt.nii.gz"), "--gt",
                 str(tmp_path / "gt.nii.gz"), "-o", str(tmp_path / "file" / "r.csv")]) == 1
    assert "is a file" in capsys.readouterr().err
