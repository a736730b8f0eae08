"""medseg.metrics.lesions against panoptica on random multi-lesion maps.

panoptica (2.x) with ``MaxBipartiteMatching`` on IoU is the same matching:
one to one, maximising the sum of IoU (it minimises the sum of 1 - IoU, with
non-candidate pairs at cost 1 + 1e-6) among pairs that beat its threshold
(``strict_threshold=True``: IoU > T; False: IoU >= T). Its ``tp``, ``fp``,
``fn``, ``rq``, ``sq`` (mean IoU of the matches), ``pq`` and ``sq_dsc`` (mean
Dice of the matches) are compared; panoptica has no BraTS lesion-wise Dice,
which is ``sq_dsc * tp / (tp + fp + fn)`` from its numbers. One stated
difference: without any match panoptica reports ``sq = 0``, medseg NaN (the
mean of no values); ``pq`` is 0 in both. Connected
components come from panoptica itself (cc3d, 26-connected) for connectivity
26 and from ``cc3d`` with ``connectivity=6`` otherwise, never from medseg.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics import lesion_metrics

panoptica = pytest.importorskip("panoptica")
cc3d = pytest.importorskip("cc3d")


def _random_maps(seed: int, shape=(48, 48, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Boxes as true lesions; the prediction drops, shifts, resizes and cuts them, adds FPs."""
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(12):
        lo = rng.integers(2, np.array(shape) - 9)
        hi = lo + rng.integers(2, 8, 3)
        gt[tuple(map(slice, lo, hi))] = True
        if rng.random() < 0.2:
            continue  # missed
        shift = rng.integers(-1, 2, 3) * (rng.random(3) < 0.5)
        grow = rng.integers(-1, 2, 3) * (rng.random(3) < 0.5)
        plo, phi = np.maximum(lo + shift, 0), np.maximum(hi + shift + grow, lo + shift + 1)
        pred[tuple(map(slice, plo, phi))] = True
        if rng.random() < 0.3:  # cut in two along x
            pred[(lo[0] + hi[0]) // 2, lo[1]:hi[1] + 3, lo[2]:hi[2] + 3] = False
    for _ in range(4):  # false positives
        lo = rng.integers(0, np.array(shape) - 4)
        pred[tuple(map(slice, lo, lo + rng.integers(1, 4, 3)))] = True
    return pred, gt


def _panoptica(pred: np.ndarray, gt: np.ndarray, connectivity: int, threshold: float,
               strict: bool):
    from panoptica import (ConnectedComponentsInstanceApproximator, InputType,
                           MaxBipartiteMatching, Metric, Panoptica_Evaluator)
    from panoptica.utils.citation_reminder import disable_citation_reminder

    disable_citation_reminder()
    matcher = MaxBipartiteMatching(matching_metric=Metric.IOU, matching_threshold=threshold,
                                   strict_threshold=strict)
    kind = InputType.SEMANTIC if connectivity == 26 else InputType.UNMATCHED_INSTANCE
    if connectivity != 26:
        pred = cc3d.connected_components(pred, connectivity=connectivity)
        gt = cc3d.connected_components(gt, connectivity=connectivity)
    evaluator = Panoptica_Evaluator(expected_input=kind, instance_matcher=matcher,
                                    instance_approximator=ConnectedComponentsInstanceApproximator(),
                                    instance_metrics=[Metric.DSC, Metric.IOU],
                                    global_metrics=[Metric.DSC])
    result = evaluator.evaluate(pred.astype(np.int32), gt.astype(np.int32), verbose=False)
    return result["ungrouped"]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("match, threshold, strict", [("iou>0", 0.0, True),
                                                      ("iou>=0.5", 0.5, False)])
def test_agrees_with_panoptica(seed, connectivity, match, threshold, strict):
    pred, gt = _random_maps(seed)
    ours = lesion_metrics(pred.view(np.uint8), gt.view(np.uint8), np.eye(4), [1],
                          connectivity=connectivity, match=match)[1]
    theirs = _panoptica(pred, gt, connectivity, threshold, strict)
    counts, metrics = ours.counts, ours.counts.metrics()
    assert (counts.tp, counts.fp, counts.fn) == (theirs.tp, theirs.fp, theirs.fn)
    assert counts.tp + counts.fn >= 9 and counts.fp >= 3 and counts.tp >= 2  # multi-lesion
    assert metrics["rq"] == pytest.approx(theirs.rq, rel=1e-12)
    assert metrics["sq"] == pytest.approx(theirs.sq, rel=1e-12)
    assert metrics["pq"] == pytest.approx(theirs.pq, rel=1e-12)
    assert counts.dice_sum / counts.tp == pytest.approx(theirs.sq_dsc, rel=1e-12)
    brats = theirs.sq_dsc * theirs.tp / (theirs.tp + theirs.fp + theirs.fn)
    assert metrics["lesion_dice"] == pytest.approx(brats, rel=1e-12)


def test_no_match_sq_is_nan_where_panoptica_says_0():
    gt = np.zeros((10, 10, 10), bool)
    pred = gt.copy()
    gt[1:5, 1:5, 1:5] = True
    pred[4:8, 4:8, 4:8] = True  # overlap 1 voxel: IoU 1/127 < 0.5
    ours = lesion_metrics(pred.view(np.uint8), gt.view(np.uint8), np.eye(4), [1],
                          match="iou>=0.5")[1].counts
    theirs = _panoptica(pred, gt, 26, 0.5, False)
    assert (ours.tp, ours.fp, ours.fn) == (theirs.tp, theirs.fp, theirs.fn) == (0, 1, 1)
    assert np.isnan(ours.metrics()["sq"]) and theirs.sq == 0.0
    assert ours.metrics()["pq"] == theirs.pq == 0.0 and ours.metrics()["rq"] == theirs.rq == 0.0
