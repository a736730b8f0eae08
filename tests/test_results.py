"""medseg.results: reading results.csv, the one summary, the write/load round trip."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest

from medseg.errors import DataError
from medseg.metrics import METRIC_KEYS
from medseg.results import ResultRow, Results, summarize

HEADER = "case,label,label_name,status,dice,hd95_mm\n"


def _csv(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "results.csv"
    path.write_text(header + body)
    return path


def test_reads_nan_inf_and_missing_columns(tmp_path):
    rows = Results.load(_csv(tmp_path, "a,1,liver,ok,0.9,3.5\na,2,,empty_pred,0,inf\n"
                                       "b,2,spleen,both_empty,nan,nan\n")).rows
    assert [(r.case, r.label, r.label_name, r.status) for r in rows] == [
        ("a", 1, "liver", "ok"), ("a", 2, "", "empty_pred"), ("b", 2, "spleen", "both_empty")]
    assert rows[0].get("dice") == 0.9 and rows[0].get("hd95_mm") == 3.5
    assert rows[1].get("hd95_mm") == math.inf
    assert math.isnan(rows[2].get("dice"))
    assert math.isnan(rows[0].get("nsd")) and "nsd" not in rows[0].metrics  # column absent


@pytest.mark.parametrize(
    "body, header, match",
    [
        ("a,1,liver,ok\n", "case,label,label_name,status\n", "missing column.*dice"),
        ("a,1,liver,fine,0.5,1\n", HEADER, "line 2: unknown status 'fine'"),
        ("a,x,liver,ok,0.5,1\n", HEADER, "line 2: 'label' must be an integer"),
        ("a,1,liver,ok,0.5,1\na,2,k,ok,high,1\n", HEADER, "line 3: column 'dice'.*'high'"),
        ("", HEADER, "no rows"),
    ],
)
def test_bad_results_name_file_and_problem(tmp_path, body, header, match):
    path = _csv(tmp_path, body, header)
    with pytest.raises(DataError, match=match) as info:
        Results.load(path)
    assert str(path) in str(info.value)


def test_missing_results_file(tmp_path):
    with pytest.raises(DataError, match="results file does not exist"):
        Results.load(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="results file does not exist"):
        Results.load(tmp_path)  # a folder without results.csv


def test_summary_uses_finite_values_and_counts_statuses(tmp_path):
    results = Results.load(_csv(tmp_path, "a,1,l,ok,0.8,2\nb,1,l,ok,0.4,6\nc,1,l,empty_pred,0,inf\n"
                                          "d,1,l,both_empty,nan,nan\n"))
    summary = summarize(results.rows, {1: "liver"}, include_both_empty=True)
    assert results.summary == summarize(results.rows)  # no summary.json: computed by summarize
    group = summary["labels"]["1"]
    assert group["label_name"] == "liver" and group["n_rows"] == 4
    assert group["status"] == {"ok": 2, "empty_pred": 1, "empty_gt": 0, "both_empty": 1}
    dice, hd95 = group["metrics"]["dice"], group["metrics"]["hd95_mm"]
    assert dice["mean"] == pytest.approx(0.4) and dice["median"] == pytest.approx(0.4)
    assert (dice["n"], dice["n_nan"], dice["n_inf"]) == (3, 1, 0)
    assert dice["std"] == pytest.approx(np.std([0.8, 0.4, 0.0]))
    assert (dice["min"], dice["max"]) == (0.0, 0.8)
    assert hd95["mean"] == pytest.approx(4.0) and hd95["std"] == pytest.approx(2.0)
    assert (hd95["n"], hd95["n_nan"], hd95["n_inf"]) == (2, 1, 1)
    nsd = group["metrics"]["nsd"]  # not in the CSV: every value NaN, no statistics
    assert nsd["mean"] is None and (nsd["n"], nsd["n_nan"]) == (0, 4)
    assert summary["overall"]["label_name"] == "all" and summary["overall"]["n_rows"] == 4
    assert summary["cases"] == {"a": 0.8, "b": 0.4, "c": 0.0, "d": None}


def test_worst_cases_by_mean_dice(tmp_path):
    results = Results.load(_csv(tmp_path, "a,1,l,ok,0.9,1\na,2,s,ok,0.7,1\nb,1,l,ok,0.5,1\n"
                                          "b,2,s,both_empty,nan,nan\nc,1,l,both_empty,nan,nan\n"
                                          "d,1,l,ok,0.95,1\n"))
    assert results.summary["cases"]["a"] == pytest.approx(0.8)
    assert results.worst_cases(2) == [("b", 0.5), ("a", pytest.approx(0.8))]
    assert [c for c, _ in results.worst_cases(10)] == ["b", "a", "d", "c"]
    assert results.worst_cases(0) == []


def _rows() -> list[ResultRow]:
    values = dict.fromkeys(METRIC_KEYS, 1.5)
    return [
        ResultRow("c1", 1, "liver", "ok", {**values, "dice": 0.75}),
        ResultRow("c1", 2, "spleen", "empty_pred", {**values, "dice": 0.0, "hd_mm": math.inf}),
        ResultRow("c2", 1, "liver", "both_empty", {**values, "dice": math.nan}),
    ]


def test_write_then_load_round_trip(tmp_path):
    rows = _rows()
    summary = {**summarize(rows), "convention": "medseg", "n_cases": 2}
    out = tmp_path / "new" / "nested" / "results.csv"  # folders created
    assert Results(rows, summary).write(out) == out
    loaded = Results.load(out.parent)  # the folder works as well as the file
    np.testing.assert_equal([dataclasses.asdict(r) for r in loaded.rows],
                            [dataclasses.asdict(r) for r in rows])
    assert loaded.summary == json.loads(json.dumps(summary))
    assert (out.parent / "summary.csv").read_text().splitlines()[0].startswith(
        "label,label_name,metric,mean,std,median,min,max,n,n_nan,n_inf,n_ok")
    assert "c1,2,spleen,empty_pred,0.0,1.5,1.5,inf" in out.read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_summary_json_is_loaded_not_recomputed(tmp_path):
    rows = _rows()
    out = tmp_path / "results.csv"
    summary = summarize(rows)
    summary["labels"]["1"]["metrics"]["dice"]["mean"] = 0.123  # as if evaluate had said so
    Results(rows, summary).write(out)
    assert Results.load(out).summary["labels"]["1"]["metrics"]["dice"]["mean"] == 0.123


def test_summary_of_other_rows_is_not_used(tmp_path, caplog):
    rows = _rows()
    Results(rows, summarize(rows)).write(tmp_path / "results.csv")
    Results(rows[:1], summarize(rows[:1])).write(tmp_path / "first.csv")  # overwrites summary.json
    loaded = Results.load(tmp_path / "results.csv")
    assert loaded.summary == json.loads(json.dumps(summarize(rows)))
    assert "does not describe the rows of results.csv" in caplog.text


def test_write_into_a_folder_that_cannot_be_created(tmp_path):
    from medseg.errors import ImageWriteError

    (tmp_path / "file").write_text("x")
    with pytest.raises(ImageWriteError, match="cannot create the output folder") as info:
        Results(_rows(), summarize(_rows())).write(tmp_path / "file" / "sub" / "results.csv")
    assert info.value.path == str(tmp_path / "file" / "sub" / "results.csv")


# -- the both-empty policy, the case means, the volume agreement ----------------------------------
def _row(case, label, status, dice, hd95=1.0, vol_pred=1.0, vol_gt=1.0):
    return ResultRow(case, label, f"l{label}", status, {
        "dice": dice, "hd95_mm": hd95, "vol_pred_ml": vol_pred, "vol_gt_ml": vol_gt})


def _medseg_rows() -> list[ResultRow]:
    """Two cases with the medseg convention's values: both_empty is Dice 1, distance 0."""
    return [
        _row("a", 1, "ok", 0.8, 2.0), _row("a", 2, "both_empty", 1.0, 0.0, 0.0, 0.0),
        _row("a", 3, "both_empty", 1.0, 0.0, 0.0, 0.0),
        _row("b", 1, "ok", 0.6, 4.0), _row("b", 2, "empty_pred", 0.0, math.inf, 0.0, 2.0),
        _row("b", 3, "ok", 0.7, 3.0),
    ]


def test_both_empty_rows_are_left_out_of_every_statistic_but_counted():
    summary = summarize(_medseg_rows())
    assert summary["both_empty_policy"].startswith("both_empty rows (label in neither mask) "
                                                   "are left out of every statistic")
    label2 = summary["labels"]["2"]
    assert (label2["n_rows"], label2["n_counted"], label2["status"]["both_empty"]) == (2, 1, 1)
    assert label2["metrics"]["dice"]["mean"] == 0.0  # only the missed structure counts
    label3 = summary["labels"]["3"]["metrics"]["dice"]
    assert (label3["mean"], label3["n"]) == (0.7, 1)
    overall = summary["overall"]
    assert (overall["n_rows"], overall["n_counted"]) == (6, 4)
    assert overall["status"]["both_empty"] == 2
    assert overall["metrics"]["dice"]["mean"] == pytest.approx((0.8 + 0.6 + 0.0 + 0.7) / 4)
    assert overall["metrics"]["hd95_mm"]["mean"] == pytest.approx(3.0)  # (2 + 4 + 3) / 3
    assert summary["cases"] == {"a": 0.8, "b": pytest.approx((0.6 + 0.0 + 0.7) / 3)}


def test_include_both_empty_restores_the_old_numbers():
    summary = summarize(_medseg_rows(), include_both_empty=True)
    assert "(include_both_empty)" in summary["both_empty_policy"]
    assert summary["overall"]["n_counted"] == 6
    assert summary["overall"]["metrics"]["dice"]["mean"] == pytest.approx(
        (0.8 + 1 + 1 + 0.6 + 0 + 0.7) / 6)
    assert summary["labels"]["2"]["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["cases"]["a"] == pytest.approx(2.8 / 3)


def test_missed_structure_counts_as_zero_and_lowers_the_mean():
    hit = [_row("a", 1, "ok", 0.9), _row("b", 1, "ok", 0.7)]
    missed = hit + [_row("c", 1, "empty_pred", 0.0, math.inf)]
    assert summarize(hit)["labels"]["1"]["metrics"]["dice"]["mean"] == pytest.approx(0.8)
    dice = summarize(missed)["labels"]["1"]["metrics"]["dice"]
    assert dice["mean"] == pytest.approx(1.6 / 3) and dice["n"] == 3
    assert summarize(missed)["labels"]["1"]["metrics"]["hd95_mm"]["n_inf"] == 1


@pytest.mark.parametrize("dice, mean, n_nan", [(0.0, 0.45, 0), (math.nan, 0.9, 1)])
def test_empty_gt_counts_with_its_conventions_value(dice, mean, n_nan):
    # medseg gives a false positive structure Dice 0; MONAI gives NaN (left out, counted)
    stats = summarize([_row("a", 1, "ok", 0.9), _row("b", 1, "empty_gt", dice, math.inf)])[
        "labels"]["1"]["metrics"]["dice"]
    assert stats["mean"] == pytest.approx(mean) and stats["n_nan"] == n_nan


def test_overall_mean_over_rows_and_over_cases(tmp_path):
    rows = [_row("a", 1, "ok", 0.9), _row("a", 2, "ok", 0.5), _row("a", 3, "ok", 0.4),
            _row("b", 1, "ok", 1.0), _row("c", 1, "both_empty", 1.0)]
    summary = summarize(rows)
    overall = summary["overall"]
    assert overall["metrics"]["dice"]["mean"] == pytest.approx((0.9 + 0.5 + 0.4 + 1.0) / 4)
    by_case = overall["case_mean"]["dice"]  # a: 0.6, b: 1.0, c: none (only both_empty)
    assert by_case["mean"] == pytest.approx(0.8) and by_case["std"] == pytest.approx(0.2)
    assert (by_case["n"], by_case["n_nan"]) == (2, 1)
    Results(rows, summary).write(tmp_path / "results.csv")
    table = {(r["label"], r["metric"]): r for r in csv.DictReader(
        (tmp_path / "summary.csv").open())}
    assert float(table["all", "dice"]["mean"]) == pytest.approx(0.7)
    assert float(table["all_cases", "dice"]["mean"]) == pytest.approx(0.8)
    assert table["all_cases", "dice"]["n"] == "2"


def test_volume_agreement_equals_numpy_and_scipy():
    from scipy import stats

    rng = np.random.default_rng(3)
    true = rng.uniform(5, 200, 12)
    pred = true * rng.normal(1.05, 0.1, 12) + rng.normal(0, 3, 12)
    rows = [_row(f"c{i}", 4, "ok", 0.8, vol_pred=p, vol_gt=t)
            for i, (p, t) in enumerate(zip(pred, true))]
    rows[2] = _row("c2", 4, "empty_pred", 0.0, vol_pred=0.0, vol_gt=true[2])
    pred[2] = 0.0  # a missed structure counts with volume 0
    rows.append(_row("c12", 4, "both_empty", 1.0, vol_pred=0.0, vol_gt=0.0))  # left out
    agreement = summarize(rows)["labels"]["4"]["volume_agreement"]
    diff = pred - true
    assert agreement["n"] == 12
    assert agreement["bias_ml"] == pytest.approx(diff.mean(), rel=1e-12)
    assert agreement["sd_ml"] == pytest.approx(np.std(diff, ddof=1), rel=1e-12)
    assert agreement["loa_low_ml"] == pytest.approx(diff.mean() - 1.96 * np.std(diff, ddof=1))
    assert agreement["loa_high_ml"] == pytest.approx(diff.mean() + 1.96 * np.std(diff, ddof=1))
    assert agreement["pearson_r"] == pytest.approx(stats.pearsonr(pred, true).statistic,
                                                   rel=1e-12)
    assert "status ok, empty_pred, empty_gt" in summarize(rows)["volume_agreement_rows"]


def test_volume_agreement_undefined_values_are_none():
    from medseg.agreement import volume_agreement

    one = volume_agreement([3.0], [2.0])
    assert (one["n"], one["bias_ml"], one["sd_ml"], one["pearson_r"]) == (1, 1.0, None, None)
    flat = volume_agreement([1.0, 3.0], [2.0, 2.0])  # constant truth: r undefined
    assert flat["pearson_r"] is None and flat["sd_ml"] == pytest.approx(math.sqrt(2))
    assert volume_agreement([], [])["bias_ml"] is None
    assert volume_agreement([1.0, math.nan], [1.0, 2.0])["n"] == 1


def test_summary_json_before_the_policy_is_recomputed(tmp_path, caplog):
    rows = _medseg_rows()
    old = summarize(rows, include_both_empty=True)
    del old["both_empty_policy"]  # as written by an older medseg
    Results(rows, old).write(tmp_path / "results.csv")
    loaded = Results.load(tmp_path / "results.csv")
    assert loaded.summary == json.loads(json.dumps(summarize(rows)))
    assert "older medseg" in caplog.text
