"""One label-name file gives the same names to the manifest, the evaluation rows and the report."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.data.manifest import load_manifest
from medseg.evaluation import evaluate_folders
from medseg.io.cases import read_label_names
from medseg.report import WorstCases, write_report
from report_html import parse_report


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """images/, gt/, pred/ with one case holding labels 1 and 2."""
    root = tmp_path_factory.mktemp("names")
    gt = np.zeros((12, 12, 8), np.uint8)
    gt[2:6, 2:6, 2:6], gt[7:10, 7:10, 2:6] = 1, 2
    for kind, array in (("images", gt.astype(np.int16) * 50), ("gt", gt), ("pred", gt)):
        (root / kind).mkdir()
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0])), root / kind / "c1.nii.gz")
    return root


@pytest.mark.parametrize(
    ("labels", "zero"),
    [
        ({"1": "liver", "2": "tumour"}, "background"),  # no 0 entry
        ({"0": "clear", "1": "liver", "2": "tumour"}, "clear"),
        ({"background": 0, "liver": 1, "tumour": 2}, "background"),  # nnU-Net v2
    ],
)
def test_same_names_in_manifest_evaluation_and_report(dataset, tmp_path, labels, zero):
    doc = {"labels": labels, "training": [{"image": str(dataset / "images" / "c1.nii.gz"),
                                           "label": str(dataset / "gt" / "c1.nii.gz")}]}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(doc))
    expected = {0: zero, 1: "liver", 2: "tumour"}
    assert read_label_names(path) == expected
    assert load_manifest(path).label_names == expected
    rows, summary = evaluate_folders(dataset / "pred", dataset / "gt", tmp_path / "results.csv",
                                     labels=path)
    assert [(r["label"], r["label_name"]) for r in rows] == [(1, "liver"), (2, "tumour")]
    assert [g["label_name"] for g in summary["labels"].values()] == ["liver", "tumour"]
    out = tmp_path / "report.html"
    write_report(tmp_path / "results.csv", out, labels=path, worst=WorstCases(n=0))
    tables = parse_report(out).tables
    assert [r[1][0] for r in tables["summary"]["rows"]] == ["liver", "tumour"]
    assert [r[2][0] for r in tables["cases"]["rows"]] == ["liver", "tumour"]
    # a CSV manifest reads the same file beside it as <name>.labels.json
    (tmp_path / "m.csv").write_text(f"image,label\n{dataset / 'images' / 'c1.nii.gz'},"
                                    f"{dataset / 'gt' / 'c1.nii.gz'}\n")
    (tmp_path / "m.labels.json").write_text(json.dumps(labels))
    assert load_manifest(tmp_path / "m.csv").label_names == expected


def test_titles_cover_every_metric():
    from medseg.metrics import METRIC_KEYS
    from medseg.report.markup import TITLES

    assert sorted(TITLES) == sorted(METRIC_KEYS)
