"""Reading results.csv and label-name files; summary statistics and worst cases."""

from __future__ import annotations

import json
import math

import pytest

from medseg.errors import ConfigError, DataError
from medseg.report.results import read_label_names, read_results, resolve_label_names
from medseg.report.summary import metric_stats, summarize, worst_cases

HEADER = "case,label,label_name,status,dice,hd95_mm\n"


def _csv(tmp_path, body: str, header: str = HEADER):
    path = tmp_path / "results.csv"
    path.write_text(header + body)
    return path


def test_reads_nan_inf_and_missing_columns(tmp_path):
    rows = read_results(_csv(tmp_path, "a,1,liver,ok,0.9,3.5\na,2,,empty_pred,0,inf\n"
                                       "b,2,spleen,both_empty,nan,nan\n"))
    assert [(r.case, r.label, r.status) for r in rows] == [
        ("a", 1, "ok"), ("a", 2, "empty_pred"), ("b", 2, "both_empty")]
    assert rows[0].get("dice") == 0.9 and rows[0].get("hd95_mm") == 3.5
    assert rows[1].get("hd95_mm") == math.inf
    assert math.isnan(rows[2].get("dice"))
    assert math.isnan(rows[0].get("nsd"))  # column absent
    assert resolve_label_names(rows, None) == {1: "liver", 2: "spleen"}


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
        read_results(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        {"1": "liver", "2": "spleen"},
        {"liver": 1, "spleen": 2},
        {"name": "Task", "labels": {"0": "background", "1": "liver", "2": "spleen"}},
        {"labels": {"background": 0, "liver": 1, "spleen": 2}},
    ],
)
def test_label_files(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    assert read_label_names(path) == {1: "liver", 2: "spleen"}


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                         ('{"1": [2]}', "neither")])
def test_bad_label_files(tmp_path, text, match):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        read_label_names(path)
    assert str(path) in str(info.value)


def test_summary_uses_finite_values_and_counts_statuses(tmp_path):
    rows = read_results(_csv(tmp_path, "a,1,l,ok,0.8,2\nb,1,l,ok,0.4,6\nc,1,l,empty_pred,0,inf\n"
                                       "d,1,l,both_empty,nan,nan\n"))
    (s,) = summarize(rows, {1: "liver"})
    assert s.name == "liver" and s.n == 4
    assert s.status_counts == {"ok": 2, "empty_pred": 1, "empty_gt": 0, "both_empty": 1}
    assert s.stats["dice"].mean == pytest.approx(0.4) and s.stats["dice"].n_finite == 3
    assert s.stats["dice"].median == pytest.approx(0.4)
    assert s.stats["hd95_mm"].mean == pytest.approx(4.0)
    assert s.stats["hd95_mm"].std == pytest.approx(2.0) and s.stats["hd95_mm"].n_finite == 2
    assert math.isnan(metric_stats([math.nan, math.inf]).mean)


def test_worst_cases_by_mean_dice(tmp_path):
    rows = read_results(_csv(tmp_path, "a,1,l,ok,0.9,1\na,2,s,ok,0.7,1\nb,1,l,ok,0.5,1\n"
                                       "b,2,s,both_empty,nan,nan\nc,1,l,both_empty,nan,nan\n"
                                       "d,1,l,ok,0.95,1\n"))
    assert worst_cases(rows, 2) == [("b", 0.5), ("a", pytest.approx(0.8))]
    assert [c for c, _ in worst_cases(rows, 10)] == ["b", "a", "d", "c"]
    assert worst_cases(rows, 0) == []
