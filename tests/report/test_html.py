"""write_report on phantom cases: content of the HTML, errors, atomicity, the CLI."""

from __future__ import annotations

import base64
import html
import json
import math

import pytest

from medseg.cli import main
from medseg.errors import DataError, ImageReadError, UsageError
from medseg.report import WorstCases, write_report
from report_html import parse_report


@pytest.fixture(scope="module")
def report(phantom_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    ds = phantom_dataset
    write_report(ds["results"], out, worst=WorstCases(2, ds["images"], ds["pred"], ds["gt"]))
    return out, parse_report(out)


def test_summary_has_one_row_per_label_with_real_means(report, phantom_dataset):
    _, parsed = report
    summary = parsed.tables["summary"]
    assert [r[1][0] for r in summary["rows"]] == ["liver", "spleen", "kidney_left",
                                                   "kidney_right", "aorta"]
    col = summary["head"].index("Dice mean")
    n_col = summary["head"].index("n")
    both_col = summary["head"].index("both empty")
    for row in summary["rows"]:
        label = int(row[0][1].split(".")[0])
        dices = [r["dice"] for r in phantom_dataset["rows"]
                 if r["label"] == label and math.isfinite(r["dice"])]
        assert float(row[col][1]) == pytest.approx(sum(dices) / len(dices))
        assert row[n_col][0] == "4"
    aorta = summary["rows"][4]
    assert aorta[both_col][0] == "1"  # case 3 has no aorta in either mask


def test_case_table_lists_every_row_with_status(report, phantom_dataset):
    _, parsed = report
    cases = parsed.tables["cases"]
    assert len(cases["rows"]) == len(phantom_dataset["rows"]) == 20
    status_col = cases["head"].index("Status")
    statuses = [r[status_col][1] for r in cases["rows"]]
    assert statuses == [r["status"] for r in phantom_dataset["rows"]]
    assert {"empty_pred", "both_empty", "ok"} <= set(statuses)
    hd95 = cases["head"].index("HD95 (mm)")
    assert "inf" in [r[hd95][1] for r in cases["rows"]]


def test_images_are_embedded_pngs_and_nothing_is_fetched(report):
    path, parsed = report
    assert len(parsed.images) == 3 + 2  # Dice, HD95 and Bland-Altman plots, 2 overlays
    for img in parsed.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"
    text = path.read_text()
    assert "http://" not in text and "https://" not in text
    assert all(link.startswith(("#", "data:")) for link in parsed.links)


def test_worst_cases_are_ranked_by_mean_dice(report, phantom_dataset):
    path, _ = report
    means = {}
    for r in phantom_dataset["rows"]:
        if math.isfinite(r["dice"]):
            means.setdefault(r["case"], []).append(r["dice"])
    ranked = sorted(means, key=lambda c: sum(means[c]) / len(means[c]))
    text = path.read_text()
    first, second = (text.index(f"{i}. {c} &mdash;") for i, c in enumerate(ranked[:2], 1))
    assert first < second
    assert f"{ranked[2]} &mdash; mean Dice" not in text


def test_label_names_file_overrides_the_csv(phantom_dataset, tmp_path):
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "Liver": 1, "Spleen": 2,
                                             "Kidney L": 3, "Kidney R": 4, "Aorta": 5}}))
    out = tmp_path / "r.html"
    write_report(phantom_dataset["results"], out, labels=labels, worst=WorstCases(n=0))
    names = [r[1][0] for r in parse_report(out).tables["summary"]["rows"]]
    assert names == ["Liver", "Spleen", "Kidney L", "Kidney R", "Aorta"]


def test_missing_case_file_raises_and_writes_nothing(phantom_dataset, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()  # empty: no predictions
    out = tmp_path / "r.html"
    with pytest.raises(ImageReadError, match="case_00"):
        write_report(phantom_dataset["results"], out,
                     worst=WorstCases(1, pred_dir=pred, gt_dir=phantom_dataset["gt"]))
    assert list(tmp_path.iterdir()) == [pred]


def test_bad_arguments(phantom_dataset, tmp_path):
    out = tmp_path / "r.html"
    with pytest.raises(UsageError, match="both pred_dir and gt_dir"):
        write_report(phantom_dataset["results"], out,
                     worst=WorstCases(pred_dir=phantom_dataset["pred"]))
    with pytest.raises(UsageError, match="worst_n"):
        write_report(phantom_dataset["results"], out, worst=WorstCases(n=-1))
    with pytest.raises(UsageError, match="window"):
        write_report(phantom_dataset["results"], out, worst=WorstCases(window="lung"))
    with pytest.raises(DataError, match="does not exist"):
        write_report(tmp_path / "nope.csv", out)
    assert not out.exists()


def test_cli_writes_the_report(phantom_dataset, tmp_path):
    ds = phantom_dataset
    out = tmp_path / "cli.html"
    code = main(["report", "--results", str(ds["results"]), "--images", str(ds["images"]),
                 "--pred", str(ds["pred"]), "--gt", str(ds["gt"]), "--worst", "1",
                 "--window=-200,300", "-o", str(out)])
    assert code == 0
    parsed = parse_report(out)
    assert len(parsed.images) == 4  # 3 plots, 1 overlay
    assert len(parsed.tables["summary"]["rows"]) == 5


def test_cli_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "results.csv"
    bad.write_text("case,label,status\nc1,1,ok\n")
    code = main(["report", "--results", str(bad), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "results.csv" in err and "dice" in err
    assert not (tmp_path / "r.html").exists()


def test_report_numbers_are_summary_json_numbers(phantom_dataset, tmp_path):
    from medseg.evaluation import evaluate_folders

    ds = phantom_dataset
    results = tmp_path / "eval" / "results.csv"
    evaluate_folders(ds["pred"], ds["gt"], results)
    summary_path = results.with_name("summary.json")
    summary = json.loads(summary_path.read_text())
    summary["labels"]["1"]["metrics"]["dice"]["mean"] = 0.5  # the report must show this one
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "new" / "report.html"  # the report's folder is created
    write_report(results, out, worst=WorstCases(pred_dir=ds["pred"], gt_dir=ds["gt"], n=4))
    table = parse_report(out).tables["summary"]
    head = table["head"]
    for row in table["rows"]:
        group = summary["labels"][row[0][0]]
        assert row[head.index("n")][0] == str(group["n_rows"])
        assert row[head.index("empty pred")][0] == str(group["status"]["empty_pred"])
        for title, metric in (("Dice", "dice"), ("HD95 (mm)", "hd95_mm")):
            for stat in ("mean", "median", "std"):
                value = group["metrics"][metric][stat]
                cell = row[head.index(f"{title} {stat}")][1]
                assert (cell == "nan") if value is None else float(cell) == value
    assert table["rows"][0][head.index("Dice mean")] == ("0.500", "0.5")
    worst = sorted(summary["cases"], key=lambda c: summary["cases"][c])
    text = out.read_text()
    positions = [text.index(f"{i}. {case} &mdash;") for i, case in enumerate(worst, 1)]
    assert positions == sorted(positions)


def test_cli_report_into_a_new_folder(phantom_dataset, tmp_path):
    out = tmp_path / "new" / "dir" / "report.html"
    assert main(["report", "--results", str(phantom_dataset["results"]), "--worst", "0",
                 "-o", str(out)]) == 0
    assert len(parse_report(out).tables["summary"]["rows"]) == 5


def test_policy_overall_and_volume_agreement_are_summary_json_numbers(phantom_dataset, tmp_path):
    from medseg.evaluation import evaluate_folders

    ds = phantom_dataset
    results = tmp_path / "results.csv"
    evaluate_folders(ds["pred"], ds["gt"], results, labels=[1, 2, 3, 4, 5])
    summary_path = results.with_name("summary.json")
    summary = json.loads(summary_path.read_text())
    summary["labels"]["2"]["volume_agreement"]["bias_ml"] = 12.5  # the report must show these
    summary["overall"]["case_mean"]["dice"]["mean"] = 0.25
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "report.html"
    write_report(results, out, worst=WorstCases(n=0))
    parsed = parse_report(out)
    assert f"Rows counted: {summary['both_empty_policy']}." in html.unescape(out.read_text())
    overall = {r[0][0]: r for r in parsed.tables["overall"]["rows"]}
    head = parsed.tables["overall"]["head"]
    dice = summary["overall"]["metrics"]["dice"]
    assert float(overall["Dice"][head.index("mean over rows")][1]) == dice["mean"]
    assert overall["Dice"][head.index("n rows")][0] == str(dice["n"])
    assert overall["Dice"][head.index("mean over cases")] == ("0.250", "0.25")
    table = parsed.tables["agreement"]
    head = table["head"]
    assert [r[0][0] for r in table["rows"]] == ["1", "2", "3", "4", "5"]
    for row in table["rows"]:
        agreement = summary["labels"][row[0][0]]["volume_agreement"]
        assert row[head.index("n")][0] == str(agreement["n"])
        for title, key in (("bias (mL)", "bias_ml"), ("LoA low (mL)", "loa_low_ml"),
                           ("LoA high (mL)", "loa_high_ml"), ("Pearson r", "pearson_r")):
            assert float(row[head.index(title)][1]) == agreement[key]
    assert table["rows"][1][head.index("bias (mL)")] == ("12.50", "12.5")
    aorta = summary["labels"]["5"]["volume_agreement"]
    assert aorta["n"] == 3  # case 3 has no aorta in either mask: left out
    assert any(img["id"] == "plot-volumes" for img in parsed.images)


def test_bland_altman_png_only_for_labels_with_cases(phantom_dataset):
    from medseg.report.agreement import bland_altman_png
    from medseg.results import Results

    results = Results.load(phantom_dataset["results"])
    agreement = {int(k): g["volume_agreement"] for k, g in results.summary["labels"].items()}
    png = bland_altman_png(results.rows, {}, agreement)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    none = {label: {**a, "n": 0} for label, a in agreement.items()}
    assert bland_altman_png(results.rows, {}, none) is None
