"""medseg compare: paired statistics against scipy and hand calculations, pairing rules, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from medseg.cli import main
from medseg.compare import (CompareOptions, bootstrap_ci, compare_results, holm,
                            signed_differences, wilcoxon_p)
from medseg.errors import DataError, UsageError
from medseg.results import ResultRow, Results, summarize

INF = math.inf


def _write(folder, rows, convention="medseg"):
    summary = summarize(rows)
    summary.update(convention=convention, nsd_tolerance_mm=1.0,
                   n_cases=len({r.case for r in rows}))
    return Results(rows, summary).write(folder / "results.csv")


def _rows(values, status="ok"):
    """values: {(case, label): (dice, hd95_mm)}."""
    return [ResultRow(case, label, f"organ{label}", status, {"dice": d, "hd95_mm": h})
            for (case, label), (d, h) in values.items()]


def _pair(tmp_path, n_cases=25, labels=(1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for label in labels:
        shift = 0.03 * (label - 1)  # label 1: no effect, label 3: clear effect
        for case in range(n_cases):
            dice = float(np.clip(0.8 + 0.05 * rng.standard_normal(), 0, 1))
            hd = float(3 + rng.standard_normal())
            a[(f"c{case:02d}", label)] = (dice, hd)
            b[(f"c{case:02d}", label)] = (dice + shift + 0.02 * rng.standard_normal(),
                                          hd - 10 * shift + 0.5 * rng.standard_normal())
    return _write(tmp_path / "A", _rows(a)), _write(tmp_path / "B", _rows(b)), a, b


def _row(comparison, label, metric):
    return next(r for r in comparison.rows if r["label"] == label and r["metric"] == metric)


def test_p_values_equal_scipy_wilcoxon_and_holm_by_hand(tmp_path):
    path_a, path_b, a, b = _pair(tmp_path)
    comparison = compare_results(path_a, path_b, CompareOptions(metrics=("dice", "hd95_mm")))
    for metric, index in (("dice", 0), ("hd95_mm", 1)):
        p = []
        for label in (1, 2, 3):
            keys = [k for k in a if k[1] == label]
            diff = np.array([b[k][index] - a[k][index] for k in keys])
            expected = stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue
            row = _row(comparison, label, metric)
            assert row["p_value"] == pytest.approx(expected, rel=1e-12)
            assert row["mean_diff"] == pytest.approx(diff.mean(), rel=1e-12)
            assert row["mean_a"] == pytest.approx(np.mean([a[k][index] for k in keys]))
            better = diff > 0 if metric == "dice" else diff < 0
            assert (row["wins"], row["losses"]) == (better.sum(), (~better).sum())
            p.append(expected)
        order = np.argsort(p)  # Holm: p_(i) * (m - i + 1), running maximum, capped at 1
        by_hand = np.empty(3)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (3 - rank) * p[i]))
            by_hand[i] = running
        got = [_row(comparison, label, metric)["p_holm"] for label in (1, 2, 3)]
        assert got == pytest.approx(list(by_hand), rel=1e-12)
    assert _row(comparison, 3, "dice")["p_holm"] < 0.01  # the clear effect is found


def test_holm_hand_values_and_nan():
    got = holm([0.01, 0.04, 0.03, math.nan])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_reproducible_and_covers_the_true_mean():
    rng = np.random.default_rng(123)
    diff = rng.normal(0.02, 0.05, 30)
    assert bootstrap_ci(diff, 500, seed=7) == bootstrap_ci(diff, 500, seed=7)
    assert bootstrap_ci(diff, 500, seed=7) != bootstrap_ci(diff, 500, seed=8)
    covered = 0  # percentile bootstrap, mean of 200 normal differences: about 94.5 % expected
    rng = np.random.default_rng(14)
    for trial in range(200):
        sample = rng.normal(0.3, 1.0, 200)
        low, high = bootstrap_ci(sample, 500, seed=trial)
        assert low < sample.mean() < high
        covered += low <= 0.3 <= high
    assert covered >= 0.93 * 200


def test_bootstrap_ci_equals_percentiles_of_resampled_means():
    diff = np.array([0.1, -0.2, 0.4, 0.05, 0.3])
    rng = np.random.default_rng(3)
    means = diff[rng.integers(0, 5, size=(400, 5))].mean(axis=1)
    assert bootstrap_ci(diff, 400, seed=3) == pytest.approx(tuple(np.quantile(means,
                                                                              [0.025, 0.975])))


def test_inf_handled_by_ranks(tmp_path):
    a = {("c1", 1): (0.0, INF), ("c2", 1): (0.9, 2.0), ("c3", 1): (0.0, INF),
         ("c4", 1): (0.8, 3.0), ("c5", 1): (0.7, 4.0), ("c6", 1): (0.6, 5.0)}
    b = {("c1", 1): (0.9, 2.5), ("c2", 1): (0.8, 3.0), ("c3", 1): (0.0, INF),
         ("c4", 1): (0.85, 2.0), ("c5", 1): (0.0, INF), ("c6", 1): (0.65, 4.5)}
    comparison = compare_results(_write(tmp_path / "A", _rows(a)), _write(tmp_path / "B", _rows(b)),
                                 CompareOptions(metrics=("hd95_mm",)))
    row = _row(comparison, 1, "hd95_mm")
    # c1: inf -> 2.5 (B better), c3: inf, inf (tie), c5: 4 -> inf (B worse)
    assert (row["n_pairs"], row["n_used"], row["n_nonfinite"]) == (6, 3, 3)
    assert row["mean_diff"] == pytest.approx(np.mean([1.0, -1.0, -0.5]))
    assert (row["wins"], row["ties"], row["losses"]) == (3, 1, 2)
    # ranks: the infinite differences are the largest (tied in magnitude), the tie is dropped
    by_hand = np.array([-3.0, 1.0, -1.0, 3.0, -0.5])
    assert row["p_value"] == pytest.approx(stats.wilcoxon(by_hand).pvalue, rel=1e-12)
    assert list(signed_differences(np.array([INF, 1.0, INF, 2.0]),
                                   np.array([2.0, 1.0 + 1e-13, INF, INF]))) == [-1.0, 0, 0, 1.0]
    assert math.isnan(wilcoxon_p(np.zeros(4)))


def test_both_empty_pairs_left_out_and_nan_counted(tmp_path):
    a = _rows({("c1", 1): (0.9, 2.0), ("c2", 1): (0.8, 3.0), ("c3", 1): (0.7, 1.0)})
    b = _rows({("c1", 1): (0.95, 1.0), ("c2", 1): (0.85, 2.0), ("c3", 1): (math.nan, 2.0)})
    a += _rows({("c4", 1): (1.0, 0.0)}, "both_empty")
    b += _rows({("c4", 1): (1.0, 0.0)}, "both_empty")
    comparison = compare_results(_write(tmp_path / "A", a), _write(tmp_path / "B", b))
    assert comparison.info["n_both_empty_left_out"] == 1 and comparison.info["n_pairs"] == 3
    row = _row(comparison, 1, "dice")
    assert (row["n_pairs"], row["n_nan"], row["wins"]) == (2, 1, 2)
    assert row["mean_diff"] == pytest.approx(0.05)


def test_unpaired_rows_error_or_intersect(tmp_path, caplog):
    values = {(f"c{i}", 1): (0.8, 2.0) for i in range(9)}
    path_a = _write(tmp_path / "A", _rows(values))
    path_b = _write(tmp_path / "B", _rows({k: v for k, v in values.items() if k[0] < "c2"}))
    with pytest.raises(DataError, match=r"7 in .*A.*but not in .*B.*\(c2, 1\).*and 2 more"):
        compare_results(path_a, path_b)
    comparison = compare_results(path_a, path_b, CompareOptions(intersect=True))
    assert comparison.info["n_pairs"] == 2 and comparison.info["n_unpaired_dropped"] == 7
    assert "dropped 7 unpaired rows" in caplog.text


def test_different_convention_or_labels_is_one_error_naming_both(tmp_path):
    values = {(f"c{i}", 1): (0.8, 2.0) for i in range(3)}
    path_a = _write(tmp_path / "A", _rows(values))
    path_b = _write(tmp_path / "B", _rows(values), convention="monai")
    with pytest.raises(DataError, match="different conventions") as info:
        compare_results(path_a, path_b)
    assert str(path_a) in str(info.value) and str(path_b) in str(info.value)
    path_c = _write(tmp_path / "C", _rows({(f"c{i}", 2): (0.8, 2.0) for i in range(3)}))
    with pytest.raises(DataError, match=r"different label sets: \{1: organ1\} and \{2: organ2\}"):
        compare_results(path_a, path_c)


@pytest.mark.parametrize("kwargs", [{"metrics": ("dise",)}, {"metrics": ("vol_gt_ml",)},
                                    {"metrics": ()}, {"seed": -1}, {"n_bootstrap": 0}])
def test_bad_options(kwargs):
    with pytest.raises(UsageError):
        CompareOptions(**kwargs)


def test_cli_writes_csv_json_table_and_report_section(tmp_path, capsys):
    path_a, path_b, _, _ = _pair(tmp_path, n_cases=12)
    out = tmp_path / "cmp"
    assert main(["compare", str(path_a.parent), str(path_b), "-o", str(out),
                 "--metrics", "dice,hd95_mm", "--seed", "3", "--bootstrap", "300"]) == 0
    printed = capsys.readouterr().out
    assert "differences B - A" in printed and "inf - inf is a tie" in printed
    data = json.loads((out / "compare.json").read_text())
    again = compare_results(path_a, path_b, CompareOptions(("dice", "hd95_mm"), seed=3,
                                                           n_bootstrap=300))
    assert data["rows"][0]["ci_low"] == again.rows[0]["ci_low"]  # seeded: reproducible
    assert len(data["rows"]) == 6 and len(data["pairs"]["case"]) == 36
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("label,label_name,metric")
    html = tmp_path / "report.html"
    assert main(["report", "--results", str(path_b), "--compare", str(out / "compare.json"),
                 "-o", str(html)]) == 0
    text = html.read_text()
    assert 'id="compare"' in text and 'id="compare-hd95_mm"' in text
    assert "zero_method=&#x27;wilcox&#x27;" in text


def test_cli_convention_error_is_one_line(tmp_path, capsys):
    values = {(f"c{i}", 1): (0.8, 2.0) for i in range(3)}
    path_a = _write(tmp_path / "A", _rows(values))
    path_b = _write(tmp_path / "B", _rows(values), convention="deepmind")
    assert main(["compare", str(path_a), str(path_b), "-o", str(tmp_path / "o")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medseg")]
    assert len(errors) == 1 and "different conventions" in errors[0] and str(path_a) in errors[0]
    assert not (tmp_path / "o").exists()


def test_report_rejects_a_file_that_is_not_a_comparison(tmp_path):
    from medseg.report import write_report

    path_a = _write(tmp_path / "A", _rows({("c1", 1): (0.8, 2.0)}))
    bad = tmp_path / "compare.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(DataError, match="missing a, b, metrics, pairs, policy") as info:
        write_report(path_a, tmp_path / "r.html", compare=bad)
    assert str(bad) in str(info.value) and not (tmp_path / "r.html").exists()
