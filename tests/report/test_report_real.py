"""The report of a real 41-label TotalSegmentator segmentation against a perturbed copy.

Uses ``<repo>/../shared/data/totalsegmentator`` (ct.nii.gz, seg.nii.gz,
labels.json), read in place and never copied into the repository; skipped when
it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.report import WorstCases, write_report
from report_html import parse_report
from report_testdata import copy_for_lead, full_page_screenshot, results_rows, save_nifti
from report_testdata import write_results_csv

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalsegmentator"
SCREENSHOT_COPY = "/tmp/medseg_report_real.png"

pytestmark = pytest.mark.skipif(
    not (DATA / "seg.nii.gz").is_file(), reason=f"real TotalSegmentator data absent at {DATA}"
)


def _perturb(seg: np.ndarray) -> np.ndarray:
    """Dilate every third label, erode the next, keep the third; drop the smallest label."""
    pred = seg.copy()
    values, counts = np.unique(seg[seg > 0], return_counts=True)
    for i, value in enumerate(values):
        mask = seg == value
        if i % 3 == 0:
            pred[ndimage.binary_dilation(mask) & (seg == 0)] = value
        elif i % 3 == 1:
            pred[mask & ~ndimage.binary_erosion(mask)] = 0
    pred[seg == values[int(np.argmin(counts))]] = 0
    return pred


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("totalseg")
    seg_img = nib.load(DATA / "seg.nii.gz")
    seg = np.asarray(seg_img.dataobj).astype(np.uint8)
    pred = _perturb(seg)
    for folder in ("gt", "pred"):
        (root / folder).mkdir()
    save_nifti(seg, seg_img.affine, root / "gt" / "s0011.nii.gz")
    save_nifti(pred, seg_img.affine, root / "pred" / "s0011.nii.gz")
    spacing = tuple(float(s) for s in seg_img.header.get_zooms()[:3])
    present = {int(v): "" for v in np.unique(seg) if v}  # names must come from labels.json
    rows = results_rows("s0011", seg, pred, present, spacing, float(np.prod(spacing)) / 1000)
    results = write_results_csv(root / "results.csv", rows)
    out = root / "report.html"
    # The CT stays in the shared folder: a symlink gives it the case name.
    images = root / "images"
    images.mkdir()
    (images / "s0011.nii.gz").symlink_to(DATA / "ct.nii.gz")
    write_report(results, out, labels=DATA / "labels.json",
                 worst=WorstCases(1, images, root / "pred", root / "gt"))
    names = json.loads((DATA / "labels.json").read_text())
    return out, rows, {v: names[str(v)] for v in present}


def test_summary_names_all_41_labels(real_report):
    out, rows, names = real_report
    assert len(names) == 41
    parsed = parse_report(out)
    summary = parsed.tables["summary"]["rows"]
    assert len(summary) == 41
    assert [r[1][0] for r in summary] == [names[v] for v in sorted(names)]
    statuses = {r["status"] for r in rows}
    assert "empty_pred" in statuses and "ok" in statuses
    assert len(parsed.tables["cases"]["rows"]) == 41
    assert len(parsed.images) == 4  # Dice, HD95 and Bland-Altman plots, one overlay
    text = out.read_text()
    assert all(name in text for name in names.values())


def test_real_report_screenshot(real_report, browser, tmp_path):
    out, _, _ = real_report
    browser.get("about:blank")
    browser.get_log("browser")
    browser.get(out.as_uri())
    loaded = browser.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0);"
    )
    assert loaded
    rows = browser.execute_script("return document.querySelectorAll('#summary tbody tr').length;")
    assert rows == 41
    shot = full_page_screenshot(browser, tmp_path / "real.png")
    copy_for_lead(shot, SCREENSHOT_COPY)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
