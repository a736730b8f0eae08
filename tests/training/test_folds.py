"""k-fold cross-validation: splits, --folds/--fold runs, out-of-fold evaluation, and the
post-processing chosen from out-of-fold Dice."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from medseg.card import Postprocess
from medseg.checkpoint import load_checkpoint
from medseg.cli import main
from medseg.config import load_config
from medseg.data.splits import fold_cases, kfold_splits, read_splits, write_splits
from medseg.errors import ConfigError
from medseg.inference.postprocess import apply_postprocess, remove_small_components
from medseg.runtime import Runtime
from medseg.inference.postprocess_choice import (
    case_components, choose_min_size, choose_postprocess, postprocess_dice)
from medseg.training.data import prepare_data

from .training_helpers import tiny_config, weights_of, write_config

IDS = [f"case{i:02d}" for i in range(10)]
PHANTOMS = [f"phantom_{i:03d}" for i in range(5)]  # 4 training + 1 validation phantom


# -- splits ------------------------------------------------------------------------------------
def test_kfold_splits_are_deterministic_disjoint_and_cover_each_case_once():
    splits = kfold_splits(IDS, 3, seed=7)
    assert splits == kfold_splits(list(reversed(IDS)), 3, seed=7)  # order of ids irrelevant
    assert splits != kfold_splits(IDS, 3, seed=8)
    held = [c for s in splits for c in s["val"]]
    assert sorted(held) == IDS  # every case validated exactly once
    assert sorted(len(s["val"]) for s in splits) == [3, 3, 4]
    for s in splits:
        assert sorted(s["train"] + s["val"]) == IDS and not set(s["train"]) & set(s["val"])
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])
    with pytest.raises(ConfigError, match="2 <= folds <= 10"):
        kfold_splits(IDS, 11)


def test_read_splits_checks_form_partition_and_cases(tmp_path):
    path = write_splits(tmp_path / "splits.json", kfold_splits(IDS, 2))
    assert read_splits(path, IDS) == json.loads(path.read_text())
    with pytest.raises(ConfigError, match=r"1 unknown cases \(case09\)") as err:
        read_splits(path, IDS[:9])
    assert "splits.json" in str(err.value)
    with pytest.raises(ConfigError, match=r"1 cases not in it \(extra\)"):
        read_splits(path, IDS + ["extra"])
    twice = [{"train": [], "val": ["a"]}, {"train": [], "val": ["a"]}]
    with pytest.raises(ConfigError, match="'a' is validated in folds 0 and 1"):
        read_splits(write_splits(tmp_path / "bad.json", twice))
    with pytest.raises(ConfigError, match="fold 0: expected"):
        read_splits(write_splits(tmp_path / "form.json", [{"train": ["a"]}]))


# -- runs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """4 training + 1 validation phantom, 1 epoch of 2 iterations; a shared cache."""
    folder = tmp_path_factory.mktemp("folds")
    raw = tiny_config(epochs=1, iterations_per_epoch=2)
    raw["data"]["phantom"]["n_train"] = 4
    raw["data"]["cache_dir"] = str(folder / "cache")
    return write_config(folder / "tiny.yaml", raw)


def _train(config, run, *args):
    return main(["train", str(config), "-o", str(run), "--no-progress", *map(str, args)])


def _error(capsys) -> str:
    """The one error line on stderr (log lines aside)."""
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("medseg: error")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--folds", "1"], "--folds 1: expected 2 <= K <= 5"),
    (["--folds", "6"], "--folds 6: expected 2 <= K <= 5"),
    (["--folds", "3", "--fold", "3"], "--fold 3: folds are numbered 0 to 2"),
    (["--folds", "3", "--fold", "-1"], "--fold -1: folds are numbered 0 to 2"),
    (["--fold", "0"], "--fold 0 needs --folds K"),
    (["--evaluate-cv"], "splits.json does not exist: train the folds first"),
])
def test_fold_options_out_of_range_are_one_line_errors(config, tmp_path, capsys, args,
                                                       expected):
    assert _train(config, tmp_path / "run", *args) == 2
    assert expected in _error(capsys)
    assert not (tmp_path / "run" / "fold_0").exists()


def test_one_fold_then_resume_all_then_out_of_fold_evaluation(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(config, run, "--folds", 3, "--fold", 1) == 0
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_1"]
    splits = read_splits(run / "splits.json", PHANTOMS)
    assert splits == kfold_splits(PHANTOMS, 3, seed=0)  # seeded by train.seed
    # the fold's run validates on its held-out cases, from its own saved config
    cfg = load_config(run / "fold_1" / "config.yaml")
    assert (cfg.data.split_file, cfg.data.fold) == (str(run / "splits.json"), 1)
    from medseg.transforms import Preprocessing

    data = prepare_data(cfg, Preprocessing.from_config(cfg.preprocessing),
                        tmp_path / "cache", Runtime.cpu())
    assert sorted(c.case_id for c in data.val) == splits[1]["val"]
    assert sorted(c.case_id for c in data.train) == splits[1]["train"]
    # evaluation needs every fold
    assert _train(config, run, "--evaluate-cv") == 2
    assert "fold(s) 0, 2 have no best.safetensors" in _error(capsys)
    # --resume trains the missing folds and leaves the finished one as it is
    fold1 = weights_of(run / "fold_1" / "best.safetensors")
    assert _train(config, run, "--folds", 3, "--resume") == 0
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_0", "fold_1", "fold_2"]
    with open(run / "fold_1" / "log.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    after = weights_of(run / "fold_1" / "best.safetensors")
    assert all(np.array_equal(fold1[k], after[k]) for k in fold1)  # bit-identical weights
    _check_cv_outputs(run, splits)
    # splits.json is reused; another K, or splits of other cases, is a one-line error
    assert _train(config, run, "--folds", 2, "--fold", 0) == 2
    assert "holds 3 folds; use --folds 3" in _error(capsys)
    write_splits(run / "splits.json", kfold_splits(PHANTOMS[:4], 3))
    assert _train(config, run, "--folds", 3, "--fold", 0) == 1
    assert "1 cases not in it (phantom_004)" in _error(capsys)


def _check_cv_outputs(run, splits):
    with open(run / "cv" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({r["case"] for r in rows}) == PHANTOMS  # exactly the held-out cases
    assert len(rows) == 5 * len(PHANTOMS)  # 5 labels per case
    summary = json.loads((run / "cv" / "summary.json").read_text())
    assert summary["n_cases"] == 5
    for i, split in enumerate(splits):
        listed = (run / "cv" / "folds" / f"fold_{i}.csv").read_text().splitlines()[1:]
        assert [line.split(",")[0] for line in listed] == split["val"]
    report = json.loads((run / "cv" / "postprocessing.json").read_text())
    chosen = Postprocess(**report["postprocess"])
    for i in range(3):
        assert load_checkpoint(run / f"fold_{i}" / "best.safetensors").card.postprocess == chosen
    # the temperature fitted on the pooled out-of-fold probabilities is in every card
    calibration = json.loads((run / "cv" / "calibration.json").read_text())
    assert calibration["cases"] == len(PHANTOMS) and calibration["bins"] == 15
    assert calibration["factor"] == calibration["temperature"]  # the cards had none before
    for i in range(3):
        card = load_checkpoint(run / f"fold_{i}" / "best.safetensors").card
        assert card.confidence.temperature == pytest.approx(calibration["temperature"])
        # the training cohort: this fold's training cases (the label-5 volumes are > 0)
        assert card.confidence.cohort.cases == len(splits[i]["train"])
        assert card.confidence.cohort.labels[5].volume_ml.min > 0
    labels = report["labels"]
    assert set(labels) == {"liver", "spleen", "kidney_left", "kidney_right", "aorta"}
    for entry in labels.values():  # chosen exactly where keep-largest raised the mean Dice
        # the Dice without post-processing is medseg evaluate's mean Dice of that label
        mean = summary["labels"][str(entry["value"])]["metrics"]["dice"]["mean"]
        assert entry["dice_without"] == pytest.approx(mean, abs=1e-12)
        better = (entry["dice_with_keep_largest"] or 0) > (entry["dice_without"] or 0)
        assert entry["keep_largest"] == better


# -- the post-processing choice ------------------------------------------------------------------
def _line(size: int = 16, **runs) -> np.ndarray:
    """A (size, 1, 1) label map; ``runs``: label -> list of (start, stop) voxel runs."""
    out = np.zeros((size, 1, 1), np.uint8)
    for name, spans in runs.items():
        for start, stop in spans:
            out[start:stop] = int(name[1:])
    return out


def test_keep_largest_is_chosen_where_it_raises_the_out_of_fold_dice():
    # case A: label 1 is a 4-voxel run plus a 1-voxel island in the prediction:
    #   Dice 2*4/(5+4) = 8/9 without, 1 with keep-largest.
    # label 2 really has two 2-voxel pieces, predicted exactly: Dice 1 without; keep-largest
    #   keeps the first piece only: 2*2/(2+4) = 2/3.
    gt_a = _line(l1=[(0, 4)], l2=[(10, 12), (14, 16)])
    pred_a = _line(l1=[(0, 4), (6, 7)], l2=[(10, 12), (14, 16)])
    # case B: label 1 exact (1 and 1), label 2 in neither map (not counted), label 3 missed
    gt_b, pred_b = _line(l1=[(0, 3)], l3=[(8, 10)]), _line(l1=[(0, 3)])
    per_case = [postprocess_dice(pred_a, gt_a, [1, 2, 3]), postprocess_dice(pred_b, gt_b,
                                                                             [1, 2, 3])]
    assert per_case[0][1] == pytest.approx((8 / 9, 1.0))
    assert per_case[0][2] == pytest.approx((1.0, 2 / 3))
    assert np.isnan(per_case[0][3][0]) and np.isnan(per_case[1][2][0])
    choice = choose_postprocess(per_case)
    assert choice.postprocess == Postprocess(keep_largest=(1,))
    assert choice.dice_without == pytest.approx({1: 17 / 18, 2: 1.0, 3: 0.0})
    assert choice.dice_with == pytest.approx({1: 1.0, 2: 2 / 3, 3: 0.0})
    report = choice.to_dict({1: "a", 2: "b", 3: "c"})
    assert report["postprocess"] == {"keep_largest": [1]}
    assert report["mean_dice_without"] == pytest.approx((17 / 18 + 1 + 0) / 3)
    assert report["mean_dice_with"] == pytest.approx((1 + 1 + 0) / 3)
    assert [report["labels"][n]["keep_largest"] for n in "abc"] == [True, False, False]
    # applying the choice gives exactly the Dice it reports: label 1 filtered, 2 kept
    kept = apply_postprocess(pred_a, choice.postprocess)
    assert kept[:, 0, 0].tolist() == _line(l1=[(0, 4)], l2=[(10, 12), (14, 16)])[:, 0, 0].tolist()
    # where keep-largest helps every label the choice is plain True
    assert choose_postprocess([{1: per_case[0][1]}]).postprocess == Postprocess(True)


def test_config_yaml_of_a_fold_round_trips(config, tmp_path):
    raw = yaml.safe_load(config.read_text())
    raw["data"].update(split_file="splits.json", fold=2)
    cfg = load_config(write_config(tmp_path / "f.yaml", raw))
    assert (cfg.data.split_file, cfg.data.fold) == (str(tmp_path / "splits.json"), 2)
    raw["data"].pop("fold")
    with pytest.raises(ConfigError, match="data.split_file and data.fold go together"):
        load_config(write_config(tmp_path / "g.yaml", raw))


def test_fold_cases_keeps_manifest_order_and_checks_the_index():
    from medseg.io.cases import Case

    cases = [Case(i, ()) for i in IDS]
    splits = kfold_splits(IDS, 2)
    train, val = fold_cases(cases, splits, 1)
    assert [c.case_id for c in val] == splits[1]["val"]
    assert [c.case_id for c in train] == splits[1]["train"]
    with pytest.raises(ConfigError, match="data.fold = 2: the splits hold folds 0 to 1"):
        fold_cases(cases, splits, 2)


# -- removal of small components ---------------------------------------------------------------
MM10 = (10.0, 10.0, 10.0)  # 1 mL per voxel


# label 1 has two true parts (keep-largest would drop one); label 2 is one piece
GT_A = _line(24, l1=[(0, 4), (6, 8)], l2=[(14, 18)])
PRED_A = _line(24, l1=[(0, 4), (6, 8), (10, 11)], l2=[(14, 18), (20, 21)])  # 1-voxel islands
GT_B = _line(24, l1=[(0, 4), (6, 7)], l2=[(14, 18)])  # label 1's second part is 1 voxel, true
PRED_B = GT_B.copy()


def _choice(*cases):
    dice = [postprocess_dice(p, g, [1, 2]) for p, g in cases]
    return choose_postprocess(dice, [case_components(p, g, [1, 2], MM10) for p, g in cases])


def test_small_false_positive_components_are_removed_where_that_raises_the_dice():
    # label 1 of case A: Dice 2*6/(7+6) = 12/13; keep-largest 2*4/(4+6) = 0.8 (worse);
    # the false positive is 1 mL, so the candidate just above it, 1.1 mL, removes it: Dice 1
    table = case_components(PRED_A, GT_A, [1, 2], MM10)[1]
    assert table.size_voxels.tolist() == [4, 2, 1] and table.overlap_voxels.tolist() == [4, 2, 0]
    assert table.dice() == pytest.approx(12 / 13) and table.dice(1.1) == 1.0
    assert table.false_positive_ml().tolist() == [1.0]
    choice = _choice((PRED_A, GT_A))
    # label 2 (one piece) gets keep-largest, so no size for it; label 1 gets 1.1 mL
    assert choice.postprocess == Postprocess(keep_largest=(2,), min_size_ml={1: 1.1})
    assert choice.dice_without == pytest.approx({1: 12 / 13, 2: 8 / 9})
    assert choice.dice_min_size == {1: 1.0} and choice.chosen_dice() == {1: 1.0, 2: 1.0}
    entry = choice.to_dict({1: "atrium", 2: "aorta"})["labels"]["atrium"]
    assert entry["min_size_ml"] == 1.1 and entry["dice_with_min_size"] == 1.0
    # applying the card's choice gives the Dice it reports
    out = apply_postprocess(PRED_A, choice.postprocess, MM10)
    np.testing.assert_array_equal(out, GT_A)


def test_a_small_true_component_keeps_the_size_threshold_off():
    # case B's 1-voxel part of label 1 is true: removing < 1.1 mL gives B 2*4/(4+5) = 8/9,
    # mean (1 + 8/9) / 2 < (12/13 + 1) / 2 without; no smaller candidate changes anything
    choice = _choice((PRED_A, GT_A), (PRED_B, GT_B))
    assert choice.postprocess == Postprocess(keep_largest=(2,))
    assert choice.dice_min_size == {}
    assert choice.chosen_dice() == pytest.approx({1: (12 / 13 + 1) / 2, 2: 1.0})
    assert choose_min_size([case_components(PRED_B, GT_B, [1], MM10)], [1]) == {}


def test_component_dice_equals_the_dice_of_the_filtered_map():
    rng = np.random.default_rng(0)
    spacing = (0.7, 0.8, 2.0)
    for _ in range(5):
        pred = (rng.random((12, 10, 8)) < 0.25).astype(np.uint8) * rng.integers(1, 3, (12, 10, 8),
                                                                               dtype=np.uint8)
        gt = (rng.random((12, 10, 8)) < 0.3).astype(np.uint8)
        tables = case_components(pred, gt, [1, 2], spacing)
        for ml in (0.0, 0.0011, 0.0023, 0.01):
            kept = remove_small_components(pred, {1: ml, 2: ml}, spacing) if ml else pred
            for v in (1, 2):
                reference = postprocess_dice(kept.astype(np.int64), gt.astype(np.int64), [v])[v][0]
                assert tables[v].dice(ml) == pytest.approx(reference, nan_ok=True)
