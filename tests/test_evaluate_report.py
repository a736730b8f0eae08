"""``medseg evaluate --report``: one self-contained HTML file beside (or at) the given path."""

from __future__ import annotations

import csv
import re

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main

SPACING = (1.5, 1.5, 3.0)
AFFINE = np.diag(SPACING + (1.0,))
SHAPE = (24, 24, 12)


def _ball(centre, radius_mm):
    grid = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, SPACING)) <= radius_mm**2


def _save(array, path, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), AFFINE), str(path))


@pytest.fixture
def folders(tmp_path):
    """images/, gt/, pred/ with two cases; case_1's prediction misses label 2."""
    dirs = {k: tmp_path / k for k in ("images", "gt", "pred")}
    for d in dirs.values():
        d.mkdir()
    for i, shift in enumerate((0, 3)):
        gt = _ball((12, 12, 6), 9.0).astype(np.uint8)
        gt[_ball((12, 12, 2), 4.0)] = 2
        pred = np.roll(gt, shift, axis=0)
        if i == 1:
            pred[pred == 2] = 0
        image = np.where(gt > 0, 60, -900).astype(np.int16)
        _save(gt, dirs["gt"] / f"case_{i}.nii.gz")
        _save(pred, dirs["pred"] / f"case_{i}.nii.gz")
        _save(image, dirs["images"] / f"case_{i}.nii.gz", dtype=np.int16)
    return dirs, tmp_path


def _evaluate(dirs, out, *extra):
    return main(["evaluate", "--pred", str(dirs["pred"]), "--gt", str(dirs["gt"]),
                 "-o", str(out), "--workers", "1", *extra])


def _dice(results_csv, case, label):
    with open(results_csv, newline="") as handle:
        row = next(r for r in csv.DictReader(handle)
                   if r["case"] == case and r["label"] == str(label))
    return float(row["dice"])


def test_bare_report_goes_beside_results_with_overlays(folders):
    dirs, tmp = folders
    out = tmp / "eval" / "results.csv"
    out.parent.mkdir()
    assert _evaluate(dirs, out, "--report", "--images", str(dirs["images"])) == 0
    html = (out.parent / "report.html").read_text(encoding="utf-8")
    assert _dice(out, "case_0", 1) == 1.0 and _dice(out, "case_1", 2) == 0.0
    # both worst cases get an overlay image, case_1 (label 2 missed) ranked first
    overlays = re.findall(r'<img id="overlay-(\d)" alt="overlay of case (case_\d)"', html)
    assert overlays == [("1", "case_1"), ("2", "case_0")]
    assert 'src="data:image/png;base64,' in html
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_report_at_given_path_without_images(folders):
    dirs, tmp = folders
    report = tmp / "qc.html"
    assert _evaluate(dirs, tmp / "results.csv", "--report", str(report)) == 0
    html = report.read_text(encoding="utf-8")
    assert len(re.findall(r'<img id="overlay-\d"', html)) == 2
    assert not (tmp / "report.html").exists()


def test_report_of_single_files_has_no_overlays(folders, tmp_path):
    dirs, tmp = folders
    code = main(["evaluate", "--pred", str(dirs["pred"] / "case_1.nii.gz"),
                 "--gt", str(dirs["gt"] / "case_1.nii.gz"), "-o", str(tmp / "one.csv"),
                 "--report"])
    assert code == 0
    html = (tmp / "report.html").read_text(encoding="utf-8")
    assert "No overlays" in html
    assert "<img id=\"overlay-" not in html


def test_no_report_without_the_option(folders):
    dirs, tmp = folders
    assert _evaluate(dirs, tmp / "results.csv") == 0
    assert (tmp / "results.csv").is_file()
    assert not (tmp / "report.html").exists()


def test_images_with_file_inputs_fail_before_evaluating(folders, capsys):
    dirs, tmp = folders
    code = main(["evaluate", "--pred", str(dirs["pred"] / "case_0.nii.gz"),
                 "--gt", str(dirs["gt"] / "case_0.nii.gz"), "-o", str(tmp / "r.csv"),
                 "--report", "--images", str(dirs["images"])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "--images needs --pred and --gt to be folders" in err
    assert not (tmp / "r.csv").exists()


def test_missing_images_folder_is_named(folders, capsys):
    dirs, tmp = folders
    missing = tmp / "no_such_images"
    code = _evaluate(dirs, tmp / "r.csv", "--report", "--images", str(missing))
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"medseg: error: {missing}: ") and err.count("\n") == 1
    assert not (tmp / "r.csv").exists()


def test_report_folder_is_created(folders):
    dirs, tmp = folders
    report = tmp / "new" / "dir" / "r.html"
    assert _evaluate(dirs, tmp / "r.csv", "--report", str(report)) == 0
    assert len(re.findall(r'<img id="overlay-\d"', report.read_text(encoding="utf-8"))) == 2


def test_report_folder_that_cannot_be_created_fails_before_evaluating(folders, capsys):
    dirs, tmp = folders
    (tmp / "a_file").write_text("x")
    code = _evaluate(dirs, tmp / "r.csv", "--report", str(tmp / "a_file" / "r.html"))
    err = capsys.readouterr().err
    assert code == 1 and "a_file/r.html: cannot create the output folder" in err
    assert not (tmp / "r.csv").exists()


def test_report_finds_nhdr_and_mhd_cases(folders):
    """Cases stored as NRRD with a detached header and MetaImage .mhd get their overlays."""
    from medseg.io import read_volume, write_volume

    dirs, tmp = folders
    new = {k: tmp / f"{k}_itk" for k in dirs}
    for folder in [*new.values(), tmp / "itk"]:
        folder.mkdir()
    for i in range(2):
        for kind, ext in (("images", ".mhd"), ("gt", ".nhdr"), ("pred", ".mhd")):
            volume = read_volume(dirs[kind] / f"case_{i}.nii.gz")
            write_volume(volume, new[kind] / f"case_{i}{ext}")
    out = tmp / "itk" / "results.csv"
    assert _evaluate(new, out) == 0
    assert _dice(out, "case_1", 2) == 0.0
    report = tmp / "itk" / "report.html"
    assert main(["report", "--results", str(out), "--images", str(new["images"]),
                 "--pred", str(new["pred"]), "--gt", str(new["gt"]), "-o", str(report)]) == 0
    overlays = re.findall(r'<img id="overlay-(\d)" alt="overlay of case (case_\d)"',
                          report.read_text(encoding="utf-8"))
    assert overlays == [("1", "case_1"), ("2", "case_0")]
