"""Each convention reproduces its peer to 1e-6 relative on the same inputs, empty masks included."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import UsageError
from medseg.metrics import evaluate_arrays

from .peers import PEERS, assert_close
from .shapes import PAIRS, SHAPE, ellipsoid

SPACINGS = {"iso": (1.0, 1.0, 1.0), "aniso": (0.7, 0.7, 5.0), "odd": (1.3, 0.45, 2.2)}


def _ours(pred, gt, spacing, convention, tol):
    return evaluate_arrays(pred.astype(np.uint8), gt.astype(np.uint8), spacing, labels=[1],
                           convention=convention, nsd_tolerance_mm=tol)[1]


@pytest.mark.parametrize("convention", sorted(PEERS))
@pytest.mark.parametrize("spacing", sorted(SPACINGS))
@pytest.mark.parametrize("case", sorted(PAIRS))
def test_matches_peer(case, spacing, convention, monkeypatch):
    pred, gt = PAIRS[case]()
    sp, tol = SPACINGS[spacing], 1.5
    expected = PEERS[convention](pred, gt, sp, tol)
    got = _ours(pred, gt, sp, convention, tol)
    assert got["status"] == "ok"
    assert_close(got, expected, context=(case, spacing, convention))


@pytest.mark.parametrize("convention", sorted(PEERS))
@pytest.mark.parametrize("which", ["empty_pred", "empty_gt", "both_empty"])
def test_empty_masks_match_peer(which, convention, monkeypatch):
    full = ellipsoid((20, 20, 20), (6, 7, 5))
    empty = np.zeros(SHAPE, bool)
    pred, gt = {"empty_pred": (empty, full), "empty_gt": (full, empty), "both_empty": (empty, empty)}[which]
    sp = (0.7, 0.7, 5.0)
    peer = PEERS[convention]
    expected = peer(pred, gt, sp, 1.0, monkeypatch) if convention == "deepmind" else peer(pred, gt, sp, 1.0)
    got = _ours(pred, gt, sp, convention, 1.0)
    assert got["status"] == which
    assert_close(got, expected, context=(which, convention))


@pytest.mark.parametrize("which", ["empty_pred", "empty_gt", "both_empty"])
def test_medseg_and_medpy_empty_values_are_written(which):
    full, empty = ellipsoid((20, 20, 20), (6, 7, 5)), np.zeros(SHAPE, bool)
    pred, gt = {"empty_pred": (empty, full), "empty_gt": (full, empty), "both_empty": (empty, empty)}[which]
    for convention in ("medseg", "medpy"):
        got = _ours(pred, gt, (1.0, 1.0, 1.0), convention, 1.0)
        if which == "both_empty":
            assert (got["iou"], got["nsd"]) == (1.0, 1.0)
            assert got["dice"] == 1.0  # medpy: dc()'s ZeroDivisionError branch
            assert got["hd_mm"] == got["hd95_mm"] == got["avd_mm"] == got["assd_mm"] == 0.0
        else:
            assert (got["dice"], got["iou"], got["nsd"]) == (0.0, 0.0, 0.0)
            assert got["hd_mm"] == got["hd95_mm"] == got["avd_mm"] == got["assd_mm"] == np.inf
        assert got["accuracy"] == pytest.approx(1 - (pred ^ gt).sum() / pred.size)


def test_unknown_convention_suggests():
    mask = ellipsoid((20, 20, 20), (5, 5, 5)).astype(np.uint8)
    with pytest.raises(UsageError, match="did you mean 'monai'"):
        evaluate_arrays(mask, mask, (1, 1, 1), convention="monia")
