"""medseg.metrics.lesions: hand-made cases checked by hand, connectivity, match rules, empties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg.errors import UsageError
from medseg.metrics import LesionCounts, LesionOptions, MatchRule, lesion_metrics
from medseg.metrics import lesions as lesions_module

SPACING = (0.8, 0.8, 2.5)
# x index -> world y, y index -> world z, z index -> world x: distances must go through it.
AFFINE = np.array([[0, 0, 2.5, 10], [0.8, 0, 0, -5], [0, 0.8, 0, 3], [0, 0, 0, 1]], float)
VOXEL_ML = 0.8 * 0.8 * 2.5 / 1000


def _maps(shape=(12, 8, 8)):
    return np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)


def _one(pred, gt, **kw):
    return lesion_metrics(pred, gt, AFFINE, [1], **kw)[1]


def _metrics(result):
    return result.counts.metrics()


def test_one_true_lesion_split_in_two_predictions():
    pred, gt = _maps()
    gt[1:5, 1:3, 1:3] = 1      # 16 voxels, centroid x 2.5
    pred[1:3, 1:3, 1:3] = 1    # 8 voxels inside it (IoU 8/16), centroid x 1.5
    pred[4:5, 1:3, 1:3] = 1    # 4 voxels inside it (IoU 4/16), 2 voxels apart: own component
    res = _one(pred, gt)
    assert (res.counts.tp, res.counts.fp, res.counts.fn) == (1, 1, 0)
    tp, fp = res.lesions
    assert (tp.kind, tp.lesion_id, tp.partner_id) == ("tp", 1, 1)
    assert tp.volume_ml == pytest.approx(16 * VOXEL_ML)
    assert tp.partner_volume_ml == pytest.approx(8 * VOXEL_ML)
    assert tp.dice == pytest.approx(2 * 8 / 24) and tp.iou == pytest.approx(0.5)
    assert tp.distance_mm == pytest.approx(0.8)  # one voxel along x = 0.8 mm through AFFINE
    assert (fp.kind, fp.lesion_id, fp.partner_id, fp.dice) == ("fp", 2, None, 0.0)
    assert fp.volume_ml == pytest.approx(4 * VOXEL_ML) and math.isnan(fp.distance_mm)
    # lesion-wise Dice: (2/3) / (TP 1 + FN 0 + FP 1); SQ 0.5, RQ = F1 = 2/3, PQ = 1/3
    assert _metrics(res) == pytest.approx({
        "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "lesion_dice": 1 / 3, "sq": 0.5,
        "rq": 2 / 3, "pq": 1 / 3})


def test_two_true_lesions_merged_into_one_prediction():
    pred, gt = _maps()
    gt[1:3, 1:3, 1:3] = 1      # lesion 1: 8 voxels
    gt[4:5, 1:3, 1:3] = 1      # lesion 2: 4 voxels
    pred[1:5, 1:3, 1:3] = 1    # one 16-voxel prediction over both: IoU 8/16 and 4/16
    res = _one(pred, gt)
    assert (res.counts.tp, res.counts.fp, res.counts.fn) == (1, 0, 1)
    assert [(r.kind, r.lesion_id, r.partner_id) for r in res.lesions] == [
        ("tp", 1, 1), ("fn", 2, None)]
    assert res.lesions[0].dice == pytest.approx(16 / 24)
    assert res.lesions[1].volume_ml == pytest.approx(4 * VOXEL_ML)
    assert _metrics(res) == pytest.approx({
        "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "lesion_dice": 1 / 3, "sq": 0.5,
        "rq": 2 / 3, "pq": 1 / 3})


def test_missed_small_lesion_beside_a_large_hit():
    pred, gt = _maps()
    gt[1:5, 1:5, 1:5] = 1      # 64 voxels, found exactly
    gt[9, 6, 6] = 1            # 1 voxel, missed
    pred[1:5, 1:5, 1:5] = 1
    res = _one(pred, gt)
    assert (res.counts.tp, res.counts.fp, res.counts.fn) == (1, 0, 1)
    assert res.lesions[0].dice == 1.0 and res.lesions[0].distance_mm == pytest.approx(0.0)
    # the voxel Dice hides the miss (2*64/129 = 0.992); the lesion-wise Dice is (1 + 0) / 2
    assert _metrics(res) == pytest.approx({
        "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "lesion_dice": 0.5, "sq": 1.0,
        "rq": 2 / 3, "pq": 2 / 3})


def test_false_positive_counts_as_a_zero():
    pred, gt = _maps()
    gt[1:4, 1:4, 1:4] = 1
    pred[1:4, 1:4, 1:4] = 1
    pred[8:10, 5:7, 5:7] = 1   # far from every true lesion
    res = _one(pred, gt)
    assert (res.counts.tp, res.counts.fp, res.counts.fn) == (1, 1, 0)
    assert res.lesions[1].volume_ml == pytest.approx(8 * VOXEL_ML)
    assert _metrics(res) == pytest.approx({
        "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "lesion_dice": 0.5, "sq": 1.0,
        "rq": 2 / 3, "pq": 2 / 3})


@pytest.mark.parametrize("connectivity, second, n_lesions", [
    (6, (3, 3, 3), 2), (18, (3, 3, 3), 2), (26, (3, 3, 3), 1),   # corner neighbours
    (6, (3, 3, 2), 2), (18, (3, 3, 2), 1), (26, (3, 3, 2), 1),   # edge neighbours
])
def test_connectivity_on_a_diagonal_pair(connectivity, second, n_lesions):
    cc3d = pytest.importorskip("cc3d")
    pred, gt = _maps()
    gt[2, 2, 2] = gt[second] = 1
    pred[2, 2, 2] = 1                 # predicts only the first voxel
    res = _one(pred, gt, connectivity=connectivity)
    expected = cc3d.connected_components(gt, connectivity=connectivity, return_N=True)[1]
    assert expected == n_lesions
    assert res.counts.tp + res.counts.fn == n_lesions and res.counts.tp == 1
    # one lesion of 2 voxels matched with Dice 2/3, or two lesions, one hit (Dice 1), one missed
    assert _metrics(res)["lesion_dice"] == pytest.approx(2 / 3 if n_lesions == 1 else 0.5)


def _split_case():
    pred, gt = _maps()
    gt[1:5, 1:3, 1:3] = 1
    pred[1:3, 1:3, 1:3] = 1    # IoU 0.5 with the true lesion
    pred[4:5, 1:3, 1:3] = 1    # IoU 0.25
    return pred, gt


@pytest.mark.parametrize("match, tp, fp, fn, lesion_dice", [
    ("iou>0", 1, 1, 0, (2 / 3) / 2),
    ("iou>=0.5", 1, 1, 0, (2 / 3) / 2),   # 0.5 passes >= 0.5
    ("iou>0.5", 0, 2, 1, 0.0),            # ... but not > 0.5
    ("iou>=0.25", 1, 1, 0, (2 / 3) / 2),  # both pass; the assignment keeps the best
    ("iou>=0.6", 0, 2, 1, 0.0),
])
def test_match_rule(match, tp, fp, fn, lesion_dice):
    pred, gt = _split_case()
    res = _one(pred, gt, match=match)
    assert (res.counts.tp, res.counts.fp, res.counts.fn) == (tp, fp, fn)
    metrics = _metrics(res)
    assert metrics["lesion_dice"] == pytest.approx(lesion_dice)
    if tp == 0:  # lesions but no match: F1 and PQ 0, SQ undefined
        assert metrics["f1"] == 0.0 and metrics["pq"] == 0.0 and math.isnan(metrics["sq"])


def test_assignment_maximises_total_iou_not_greedy():
    # gt 1 = x[0,10), gt 2 = x[12,20); pred B = x[0,3), pred A = x[4,16).
    # IoU(gt1, A) = 6/16 is the largest, but taking it leaves gt 2 and B unmatched (sum 0.375);
    # gt1-B (3/10) + gt2-A (4/16) = 0.55 is the optimum, with two TPs.
    pred, gt = np.zeros((22, 1, 1), np.uint8), np.zeros((22, 1, 1), np.uint8)
    gt[0:10] = gt[12:20] = 1
    pred[0:3] = pred[4:16] = 1
    res = lesion_metrics(pred, gt, np.eye(4), [1])[1]
    assert [(r.lesion_id, r.kind, r.partner_id) for r in res.lesions] == [
        (1, "tp", 1), (2, "tp", 2)]
    assert [r.iou for r in res.lesions] == pytest.approx([3 / 10, 4 / 16])
    assert res.counts.iou_sum == pytest.approx(0.55)


def test_no_lesion_in_either_map_is_undefined_not_perfect():
    pred, gt = _maps()
    pred[pred.shape[0] - 1, 0, 0] = 2   # another label is present; label 1 is empty in both
    res = _one(pred, gt)
    assert res.lesions == () and res.counts == LesionCounts()
    assert all(math.isnan(v) for v in _metrics(res).values())


def test_only_false_positives_and_only_misses():
    pred, gt = _maps()
    pred[1:3, 1:3, 1:3] = 1
    only_fp = _metrics(_one(pred, gt))
    assert only_fp["precision"] == 0.0 and math.isnan(only_fp["recall"])
    assert only_fp["lesion_dice"] == 0.0 and only_fp["pq"] == 0.0 and math.isnan(only_fp["sq"])
    only_fn = _metrics(_one(gt, pred))
    assert math.isnan(only_fn["precision"]) and only_fn["recall"] == 0.0
    assert only_fn["lesion_dice"] == 0.0 and only_fn["f1"] == 0.0


def test_labels_are_scored_separately():
    pred, gt = _split_case()
    gt[8:10, 5:7, 5:7] = 3
    pred[8:10, 5:7, 5:7] = 3
    res = lesion_metrics(pred, gt, AFFINE, [1, 3, 4])
    assert (res[1].counts.tp, res[1].counts.fp) == (1, 1)
    assert res[3].counts == LesionCounts(1, 0, 0, 1.0, 1.0)
    assert res[4].counts == LesionCounts()


def test_sparse_pair_table_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    gt = (rng.random((20, 20, 20)) < 0.15).astype(np.uint8)
    pred = (rng.random((20, 20, 20)) < 0.15).astype(np.uint8)
    dense = lesion_metrics(pred, gt, AFFINE, [1], connectivity=6)[1]
    monkeypatch.setattr(lesions_module, "_DENSE_PAIRS_MAX", 0)
    sparse = lesion_metrics(pred, gt, AFFINE, [1], connectivity=6)[1]
    assert dense.counts.tp > 10 and dense == sparse


def test_counts_add_over_cases():
    a, b = LesionCounts(1, 2, 0, 0.5, 0.25), LesionCounts(2, 0, 1, 1.5, 1.0)
    total = a + b
    assert total == LesionCounts(3, 2, 1, 2.0, 1.25)
    assert total.metrics()["lesion_dice"] == pytest.approx(2.0 / 6)
    assert total.metrics()["pq"] == pytest.approx(1.25 / (3 + 1.5))


@pytest.mark.parametrize("text, rule", [
    ("iou>0", MatchRule(0.0, True)), ("iou>=0.5", MatchRule(0.5, False)),
    (" IoU >= 1 ".lower(), MatchRule(1.0, False)), ("iou>0.3", MatchRule(0.3, True)),
])
def test_match_rule_parsing(text, rule):
    assert MatchRule.parse(text) == rule
    assert MatchRule.parse(str(rule)) == rule


@pytest.mark.parametrize("text", ["iou>=0", "iou>1", "iou>=1.5", "dice>0", "iou=0.5", "iou>=x",
                                  ""])
def test_bad_match_rule(text):
    with pytest.raises(UsageError, match=r"--match must be 'iou>T'.*got"):
        LesionOptions((1,), match=text)


def test_options_validate_and_resolve_names():
    names = {0: "background", 1: "liver", 2: "tumour"}
    assert LesionOptions(("tumour", "1", 2)).resolve(names) == (1, 2)
    with pytest.raises(UsageError, match="--connectivity must be 6, 18 or 26, got 8"):
        LesionOptions((1,), connectivity=8)
    with pytest.raises(UsageError, match=r"--instances: 'kidney' is not .* known names: "
                                         r"liver, tumour$"):
        LesionOptions(("kidney",)).resolve(names)
    with pytest.raises(UsageError, match=r"'liver' is not .*names need a label file"):
        LesionOptions(("liver",)).resolve(None)
    for bad in ("1.5", "0", -2, "background"):
        with pytest.raises(UsageError, match="--instances"):
            LesionOptions((bad,)).resolve(names)
    with pytest.raises(UsageError, match="at least one label"):
        LesionOptions(())
