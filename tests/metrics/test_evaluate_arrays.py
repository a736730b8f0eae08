"""evaluate_arrays: multi-label maps, hand-computed values, input checks, real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import DataError, GeometryError, UsageError
from medseg.metrics import METRIC_KEYS, evaluate_arrays

from .peers import PEERS, assert_close
from .shapes import blob, ellipsoid


def _label_map():
    gt = np.zeros((40, 40, 40), np.uint8)
    gt[ellipsoid((20, 20, 20), (14, 12, 9))] = 1
    gt[ellipsoid((12, 14, 20), (5, 5, 4))] = 2
    gt[blob(3) & (gt == 0)] = 7
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt == 2, iterations=2) & (gt == 1)] = 2
    pred[ndimage.binary_erosion(gt == 7)] = 0
    pred[30:33, 30:33, 5:7] = 5  # false positive label
    return pred, gt


@pytest.mark.parametrize("convention", ["monai", "deepmind", "medpy"])
def test_multilabel_each_label_matches_peer(convention):
    pred, gt = _label_map()
    sp = (0.7, 0.7, 5.0)
    got = evaluate_arrays(pred, gt, sp, convention=convention, nsd_tolerance_mm=2.0)
    assert sorted(got) == [1, 2, 5, 7]
    assert got[5]["status"] == "empty_gt"
    for label in (1, 2, 7):
        assert_close(got[label], PEERS[convention](pred == label, gt == label, sp, 2.0), context=label)


def test_hand_computed_values():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred = np.roll(gt, 1, axis=2)  # shifted one voxel along z (2 mm)
    m = evaluate_arrays(pred, gt, (1.0, 1.0, 2.0), nsd_tolerance_mm=1.0)[1]
    assert m["dice"] == pytest.approx(48 / 64)
    assert m["iou"] == pytest.approx(48 / 80)
    assert m["accuracy"] == pytest.approx(1 - 32 / 1000)
    assert m["vol_gt_ml"] == pytest.approx(64 * 2 / 1000)
    assert m["hd_mm"] == pytest.approx(2.0)
    # surfaces: 56 boundary voxels each; per direction, the 16 voxels of the leading
    # z face are 2 mm away and the 4 centre voxels of the trailing face 1 mm (in x/y)
    assert m["avd_mm"] == pytest.approx((16 * 2.0 + 4 * 1.0) / 56)
    assert m["assd_mm"] == pytest.approx((16 * 2.0 + 4 * 1.0) / 56)
    assert m["nsd"] == pytest.approx(40 / 56)
    assert set(m) == set(METRIC_KEYS) | {"status"}


def test_medseg_invariants_and_label_selection():
    pred, gt = _label_map()
    got = evaluate_arrays(pred, gt, (1.0, 1.0, 1.0), labels=[1, 9])
    assert sorted(got) == [1, 9] and got[9]["status"] == "both_empty" and got[9]["dice"] == 1.0
    m = got[1]
    assert m["hd95_mm"] <= m["hd_mm"] and m["assd_mm"] <= m["avd_mm"] <= m["hd_mm"]
    assert 0 <= m["nsd"] <= 1 and 0 < m["iou"] < m["dice"] < 1


@pytest.mark.parametrize(
    "pred, error, pattern",
    [
        (np.zeros((4, 4, 5), np.uint8), GeometryError, "shape"),
        (np.full((4, 4, 4), -1, np.int16), DataError, "negative label -1"),
        (np.full((4, 4, 4), 0.5), DataError, "non-integer label 0.5"),
        (np.full((4, 4, 4), np.nan), DataError, "NaN"),
        (np.zeros((4, 4)), GeometryError, "3D"),
    ],
)
def test_bad_arrays(pred, error, pattern):
    with pytest.raises(error, match=pattern):
        evaluate_arrays(pred, np.zeros((4, 4, 4), np.uint8), (1, 1, 1))


@pytest.mark.parametrize("kwargs", [{"spacing_mm": (1, 1)}, {"spacing_mm": (1, 0, 1)},
                                    {"labels": [0]}, {"nsd_tolerance_mm": -1}])
def test_bad_options(kwargs):
    args = {"spacing_mm": (1, 1, 1), **kwargs}
    with pytest.raises(UsageError):
        evaluate_arrays(np.ones((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.uint8), **args)


def test_float_integral_labels_accepted():
    gt = np.zeros((8, 8, 8))
    gt[2:5, 2:5, 2:5] = 3.0
    assert evaluate_arrays(gt, gt.astype(np.uint8), (1, 1, 1))[3]["dice"] == 1.0


def _real_data():
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "totalsegmentator"
    if not (root / "seg.nii.gz").exists():
        pytest.skip(f"real data not found in {root.resolve()}")
    import nibabel as nib

    img = nib.load(str(root / "seg.nii.gz"))
    return np.asarray(img.dataobj).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


def perturb(seg: np.ndarray) -> np.ndarray:
    """Dilate every third label, erode every third (+1) label, leave the rest."""
    out = seg.copy()
    for i, label in enumerate(np.unique(seg)[1:]):
        mask = seg == label
        if i % 3 == 0:
            out[ndimage.binary_dilation(mask) & (seg == 0)] = label
        elif i % 3 == 1 and ndimage.binary_erosion(mask).any():
            out[mask & ~ndimage.binary_erosion(mask)] = 0
    return out


def test_real_segmentation_matches_peers():
    gt, spacing = _real_data()
    pred = perturb(gt)
    labels = [int(v) for v in np.unique(gt)[1:]]
    assert len(labels) == 41
    ours = {c: evaluate_arrays(pred, gt, spacing, convention=c, nsd_tolerance_mm=3.0)
            for c in ("medseg", "monai", "deepmind")}
    for label in labels:  # invariants of medseg's own convention on every label
        m = ours["medseg"][label]
        assert m["status"] == "ok" and m["hd95_mm"] <= m["hd_mm"] and m["assd_mm"] <= m["avd_mm"]
        assert m["vol_gt_ml"] == pytest.approx((gt == label).sum() * np.prod(spacing) / 1000)
    for label in labels[::5]:  # a subset against the peers themselves
        p, g = pred == label, gt == label
        assert_close(ours["monai"][label], PEERS["monai"](p, g, spacing, 3.0), context=label)
        assert_close(ours["deepmind"][label], PEERS["deepmind"](p, g, spacing, 3.0), context=label)
