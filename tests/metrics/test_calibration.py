"""ECE and the reliability curve against hand calculations; AUROC against scikit-learn."""

import math

import numpy as np
import pytest

from medseg.metrics.calibration import expected_calibration_error, near_foreground, reliability
from medseg.metrics.qc import auroc, qc_agreement


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right), 1.0 (right)
    p = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.55, 0.45], [0.0, 1.0]])
    y = np.array([0, 0, 1, 0, 1])
    # 15 bins of width 1/15: 0.9 -> bin 14 ((13/15, 14/15]), 0.6 -> bin 9 ((8/15, 9/15]),
    # 0.55 -> bin 9, 1.0 -> bin 15
    curve = reliability(p, y, 15)
    assert curve.counts[13] == 2 and curve.counts[8] == 2 and curve.counts[14] == 1
    hand = (2 * abs(0.5 - 0.9) + 2 * abs(1.0 - 0.575) + 1 * abs(1.0 - 1.0)) / 5
    assert expected_calibration_error(p, y, 15) == pytest.approx(hand)
    assert curve.counts.sum() == 5 and math.isnan(curve.accuracy[0])


def test_near_foreground_in_mm():
    pred = np.zeros((9, 1, 1), np.uint8)
    gt = np.zeros((9, 1, 1), np.uint8)
    pred[4] = 1
    mask = near_foreground(pred, gt, (2.0, 1.0, 1.0), 4.0)  # 2 voxels of 2 mm each side
    assert mask[:, 0, 0].tolist() == [False, False, True, True, True, True, True, False, False]
    assert not near_foreground(gt, gt, (1, 1, 1), 5.0).any()


def test_auroc_against_sklearn_and_by_hand():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    s = np.round(rng.random(60) + 0.5 * y, 1)  # ties
    assert auroc(s, y) == pytest.approx(metrics.roc_auc_score(y, s))
    # binary score: (sensitivity + specificity) / 2 = (2/3 + 3/4) / 2
    flagged = [1, 1, 0, 1, 0, 0, 0]
    positive = [1, 1, 1, 0, 0, 0, 0]
    assert auroc(flagged, positive) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert math.isnan(auroc([0.1, 0.2], [False, False]))


def test_qc_agreement_against_ranks_by_hand():
    est = [0.9, 0.8, 0.95, 0.5, 0.7]
    true = [0.85, 0.82, 0.9, 0.3, 0.75]
    flags = ["ok", "ok", "ok", "fail", "review"]
    r = qc_agreement(est, true, flags)
    # the same order in both: Spearman 1 except positions of 0.8/0.7 vs 0.82/0.75 agree too
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    hand = np.corrcoef(rank(est), rank(true))[0, 1]
    assert r["spearman"] == pytest.approx(hand)
    assert r["mae"] == pytest.approx(np.mean(np.abs(np.subtract(est, true))))
    assert r["failures"] == 2 and r["flagged"] == 2 and r["auroc_flag"] == 1.0
