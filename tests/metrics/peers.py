"""Reference values from the peers themselves (MONAI, surface-distance, MedPy) for one label."""

from __future__ import annotations

import warnings

from unittest import mock

import numpy as np
import pytest


def monai_values(pred: np.ndarray, gt: np.ndarray, spacing, tol: float) -> dict[str, float]:
    torch = pytest.importorskip("torch")
    m = pytest.importorskip("monai.metrics")
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    kw = dict(include_background=True, spacing=list(spacing))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": m.compute_dice(p, g, include_background=True).item(),
            "iou": m.compute_iou(p, g, include_background=True).item(),
            "hd_mm": m.compute_hausdorff_distance(p, g, **kw).item(),
            "hd95_mm": m.compute_hausdorff_distance(p, g, percentile=95, **kw).item(),
            "avd_mm": max(
                m.compute_average_surface_distance(p, g, **kw).item(),
                m.compute_average_surface_distance(g, p, **kw).item(),
            ),
            "assd_mm": m.compute_average_surface_distance(p, g, symmetric=True, **kw).item(),
            "nsd": m.compute_surface_dice(p, g, [tol], **kw).item(),
        }


def deepmind_values(pred: np.ndarray, gt: np.ndarray, spacing, tol: float, monkeypatch=None) -> dict:
    sd = pytest.importorskip("surface_distance")
    if monkeypatch is not None:  # surface-distance still uses np.Inf / np.NaN (removed in NumPy 2)
        monkeypatch.setattr(np, "Inf", np.inf, raising=False)
        monkeypatch.setattr(np, "NaN", np.nan, raising=False)
    g, p = gt.astype(bool), pred.astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = sd.compute_surface_distances(g, p, list(spacing))
        asd_gp, asd_pg = sd.compute_average_surface_distance(d)
        ag, ap = d["surfel_areas_gt"], d["surfel_areas_pred"]
        assd = (np.sum(d["distances_gt_to_pred"] * ag) + np.sum(d["distances_pred_to_gt"] * ap)) / (
            np.sum(ag) + np.sum(ap)
        )
        inter, union = np.sum(g & p), np.sum(g | p)
        return {
            "dice": sd.compute_dice_coefficient(g, p),
            "iou": inter / union if union else np.nan,
            "hd_mm": sd.compute_robust_hausdorff(d, 100),
            "hd95_mm": sd.compute_robust_hausdorff(d, 95),
            "avd_mm": np.nan if np.isnan(asd_gp) and np.isnan(asd_pg) else np.nanmax([asd_gp, asd_pg]),
            "assd_mm": assd,
            "nsd": sd.compute_surface_dice_at_tolerance(d, tol),
        }


def medpy_values(pred: np.ndarray, gt: np.ndarray, spacing, tol: float) -> dict[str, float]:
    b = pytest.importorskip("medpy.metric.binary")
    p, g = pred.astype(bool), gt.astype(bool)
    # MedPy's dc() as its code means it on every NumPy: from NumPy 2.3 count_nonzero returns
    # a NumPy integer, so the ``except ZeroDivisionError: dc = 1.0`` branch for two empty
    # masks never fires (nan instead); Python ints, as older NumPy gave, restore it.
    count = np.count_nonzero
    with mock.patch.object(b.numpy, "count_nonzero", lambda a: int(count(a))):
        out = {"dice": b.dc(p, g), "iou": b.jc(p, g)}
    if p.any() and g.any():
        out.update(
            hd_mm=b.hd(p, g, spacing),
            hd95_mm=b.hd95(p, g, spacing),
            avd_mm=max(b.asd(p, g, spacing), b.asd(g, p, spacing)),
            assd_mm=b.assd(p, g, spacing),
        )
    return out


PEERS = {"monai": monai_values, "deepmind": deepmind_values, "medpy": medpy_values}


def assert_close(ours: dict, theirs: dict, rtol: float = 1e-6, context: str = "") -> None:
    for key, expected in theirs.items():
        got = ours[key]
        if np.isnan(expected) or np.isinf(expected):
            assert (np.isnan(got) and np.isnan(expected)) or got == expected, (context, key, got, expected)
        else:
            assert got == pytest.approx(float(expected), rel=rtol, abs=1e-9), (context, key, got, expected)
