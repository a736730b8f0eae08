"""The phantom report in headless Chromium: images load, tables sort, no console errors."""

from __future__ import annotations

import math

import pytest

from medseg.report import WorstCases, write_report
from report_testdata import copy_for_lead, full_page_screenshot

SCREENSHOT_COPY = "/tmp/medseg_report_screenshot.png"


@pytest.fixture(scope="module")
def report_html(phantom_dataset, tmp_path_factory):
    ds = phantom_dataset
    out = tmp_path_factory.mktemp("browser") / "report.html"
    write_report(ds["results"], out, worst=WorstCases(3, ds["images"], ds["pred"], ds["gt"]))
    return out


@pytest.fixture
def loaded_report(browser, report_html):
    """The report freshly loaded (unsorted), with the console log emptied before loading."""
    browser.get("about:blank")
    browser.get_log("browser")
    browser.get(report_html.as_uri())
    return browser, report_html


def _column(driver, table_id: str, header: str) -> list[str]:
    return driver.execute_script(
        """
        const table = document.getElementById(arguments[0]);
        const col = [...table.tHead.rows[0].cells].findIndex(h => h.textContent === arguments[1]);
        return [...table.tBodies[0].rows].map(r => r.cells[col].getAttribute("data-v"));
        """,
        table_id,
        header,
    )


def _click_header(driver, table_id: str, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th"):
        if th.text.strip() == header:
            th.click()
            return
    raise AssertionError(f"no header {header!r} in #{table_id}")


def _key(v: str) -> float:
    return float(v)  # float("nan") / float("inf") parse the report's data-v values


def test_every_image_loaded_and_screenshot(loaded_report, tmp_path):
    driver, _ = loaded_report
    sizes = driver.execute_script(
        "return [...document.images].map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight]);"
    )
    assert len(sizes) == 3 + 3  # three plots (Dice, HD95, Bland-Altman), three overlays
    for ident, complete, width, height in sizes:
        assert complete and width > 0 and height > 0, ident
    shot = full_page_screenshot(driver, tmp_path / "report.png")
    assert shot.stat().st_size > 10_000
    copy_for_lead(shot, SCREENSHOT_COPY)


def test_summary_table_has_one_row_per_label(loaded_report):
    driver, _ = loaded_report
    names = driver.execute_script(
        "return [...document.querySelectorAll('#summary tbody tr')]"
        ".map(r => r.cells[1].textContent);"
    )
    assert names == ["liver", "spleen", "kidney_left", "kidney_right", "aorta"]


def test_case_table_sorts_on_header_click(loaded_report, phantom_dataset):
    driver, _ = loaded_report
    before = _column(driver, "cases", "Dice")
    assert before == [repr(r["dice"]) if math.isfinite(r["dice"]) else "nan"
                      for r in phantom_dataset["rows"]]  # file order at first
    _click_header(driver, "cases", "Dice")
    ascending = _column(driver, "cases", "Dice")
    finite = sorted(float(v) for v in before if v != "nan")
    assert [_key(v) for v in ascending[: len(finite)]] == finite
    assert ascending[len(finite):] == ["nan"] * (len(before) - len(finite))  # nan last
    assert ascending != before
    _click_header(driver, "cases", "Dice")
    descending = _column(driver, "cases", "Dice")
    assert [_key(v) for v in descending[: len(finite)]] == finite[::-1]
    assert descending[-1] == "nan"


def test_hd95_sort_puts_inf_above_numbers(loaded_report):
    driver, _ = loaded_report
    _click_header(driver, "cases", "HD95 (mm)")
    _click_header(driver, "cases", "HD95 (mm)")  # descending
    values = [_key(v) for v in _column(driver, "cases", "HD95 (mm)")]
    finite_or_inf = [v for v in values if not math.isnan(v)]
    assert finite_or_inf[0] == math.inf
    assert finite_or_inf == sorted(finite_or_inf, reverse=True)
    assert math.isnan(values[-1])
    state = driver.execute_script(
        "return [...document.querySelectorAll('#cases thead th')]"
        ".filter(h => h.hasAttribute('aria-sort'))"
        ".map(h => [h.textContent, h.getAttribute('aria-sort')]);"
    )
    assert state == [["HD95 (mm)", "descending"]]


def test_console_has_no_errors(loaded_report):
    driver, _ = loaded_report
    _click_header(driver, "summary", "Dice mean")  # exercise the script once more
    logs = driver.get_log("browser")
    errors = [entry for entry in logs if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
