"""Fixtures of the report tests: phantom datasets with results.csv, and a headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.data.phantom import LABEL_NAMES, make_phantom
from medseg.volume import Volume
from report_testdata import results_rows, save_nifti, write_results_csv

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(autouse=True)
def _medseg_io(monkeypatch):
    """Until medseg.io.read_volume lands, read NIfTI with nibabel in its place."""
    import medseg.io

    if not hasattr(medseg.io, "read_volume"):
        def read_volume(path):
            img = nib.load(os.fspath(path))
            return Volume(np.asanyarray(img.dataobj), img.affine, {"path": os.fspath(path)})

        monkeypatch.setattr(medseg.io, "read_volume", read_volume, raising=False)


# -- phantom dataset -----------------------------------------------------------

def _perturb(label: np.ndarray, case: int) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) of phantom case ``case``: a different kind of error in each."""
    gt = label.copy()
    pred = label.copy()
    if case == 0:  # slightly too big liver
        pred[ndimage.binary_dilation(label == 1) & (label == 0)] = 1
    elif case == 1:  # eroded spleen, shifted right kidney
        pred[(label == 2) & ~ndimage.binary_erosion(label == 2, iterations=2)] = 0
        pred[pred == 4] = 0
        pred[np.roll(label == 4, 3, axis=1)] = 4
    elif case == 2:  # aorta missed entirely, left kidney over-segmented
        pred[pred == 5] = 0
        pred[ndimage.binary_dilation(label == 3, iterations=2) & (pred == 0)] = 3
    else:  # no aorta in either (both empty), liver eroded
        gt[gt == 5] = 0
        pred[pred == 5] = 0
        pred[(label == 1) & ~ndimage.binary_erosion(label == 1, iterations=3)] = 0
    return gt, pred


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> dict:
    """4 phantom cases: images/, gt/, pred/ (NIfTI) and results.csv computed here."""
    root = tmp_path_factory.mktemp("phantoms")
    dirs = {k: root / k for k in ("images", "gt", "pred")}
    for d in dirs.values():
        d.mkdir()
    rows = []
    for case in range(4):
        name = f"case_{case:03d}"
        orientation = "LPS" if case == 1 else "RAS"
        ph = make_phantom((40, 36, 20), (6.0, 6.0, 8.0), orientation=orientation, seed=case)
        gt, pred = _perturb(ph.label.array, case)
        affine = ph.image.affine
        save_nifti(ph.image.array, affine, dirs["images"] / f"{name}.nii.gz")
        save_nifti(gt, affine, dirs["gt"] / f"{name}.nii.gz")
        save_nifti(pred, affine, dirs["pred"] / f"{name}.nii.gz")
        rows += results_rows(name, gt, pred, LABEL_NAMES, ph.image.spacing_mm,
                             ph.image.voxel_volume_ml)
    results = write_results_csv(root / "results.csv", rows)
    return {"root": root, "results": results, "rows": rows, **dirs}


# -- headless Chromium -----------------------------------------------------------

@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Selenium driving /usr/bin/chromium headless via /usr/bin/chromedriver (no downloads)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            pytest.skip(f"{path} is absent (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
