"""Helpers of the report tests: a metric oracle, results.csv and NIfTI writers, screenshots."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

COLUMNS = ["case", "label", "label_name", "status", "dice", "iou", "accuracy", "hd_mm",
           "hd95_mm", "avd_mm", "assd_mm", "nsd", "vol_pred_ml", "vol_gt_ml"]


# -- metrics: an independent, simple oracle -------------------------------------

def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0), strict=True))


def case_metrics(gt: np.ndarray, pred: np.ndarray, spacing_mm, voxel_ml: float,
                 tolerance_mm: float = 2.0) -> dict[str, float | str]:
    """Dice, IoU, distances (scipy EDT on the surfaces) and volumes of one label."""
    n_gt, n_pred = int(gt.sum()), int(pred.sum())
    out: dict[str, float | str] = {"vol_gt_ml": n_gt * voxel_ml, "vol_pred_ml": n_pred * voxel_ml,
                                   "accuracy": float((gt == pred).mean())}
    if n_gt == 0 and n_pred == 0:
        return {**out, "status": "both_empty", **dict.fromkeys(
            ["dice", "iou", "hd_mm", "hd95_mm", "avd_mm", "assd_mm", "nsd"], math.nan)}
    inter = int((gt & pred).sum())
    out["dice"] = 2 * inter / (n_gt + n_pred)
    out["iou"] = inter / int((gt | pred).sum())
    if n_gt == 0 or n_pred == 0:
        out.update(status="empty_gt" if n_gt == 0 else "empty_pred", hd_mm=math.inf,
                   hd95_mm=math.inf, avd_mm=math.inf, assd_mm=math.inf, nsd=0.0)
        return out
    box = _bounding_box(gt | pred)  # distances between surfaces stay inside it
    gt, pred = gt[box], pred[box]
    s_gt, s_pred = _surface(gt), _surface(pred)
    d_pg = ndimage.distance_transform_edt(~s_gt, sampling=spacing_mm)[s_pred]
    d_gp = ndimage.distance_transform_edt(~s_pred, sampling=spacing_mm)[s_gt]
    both = np.concatenate([d_pg, d_gp])
    out.update(
        status="ok", hd_mm=float(both.max()),
        hd95_mm=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        avd_mm=float(max(d_pg.mean(), d_gp.mean())), assd_mm=float(both.mean()),
        nsd=float((both <= tolerance_mm).mean()),
    )
    return out


def results_rows(case: str, gt: np.ndarray, pred: np.ndarray, labels: dict[int, str],
                 spacing_mm, voxel_ml: float) -> list[dict]:
    rows = []
    for value, name in labels.items():
        m = case_metrics(gt == value, pred == value, spacing_mm, voxel_ml)
        rows.append({"case": case, "label": value, "label_name": name, **m})
    return rows


def write_results_csv(path: Path, rows: list[dict]) -> Path:
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else repr(v))
        return str(v)

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([fmt(row[c]) for c in COLUMNS])
    return path


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), os.fspath(path))
    return path


def full_page_screenshot(driver, path: Path, width: int = 1400, max_height: int = 12000) -> Path:
    """Resize the window to the whole page (up to ``max_height``) and save a PNG."""
    driver.set_window_size(width, 800)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 40, max_height))
    driver.save_screenshot(str(path))
    return path


def copy_for_lead(path: Path, target: str) -> None:
    """Keep a copy of a screenshot outside tmp_path for a human to look at."""
    try:
        shutil.copyfile(path, target)
    except OSError:
        pass
