"""The HTML page around the report: inline CSS, the table-sorting script, the page shell.

Everything is inline and a Content-Security-Policy forbids any network
access: images are ``data:`` URIs, there is no external font, script or style.

Sorting: clicking a header of a ``table.sortable`` (or pressing Enter on it)
sorts by that column, ascending first, then descending. Numeric columns
(``data-type="num"``) compare the cell's ``data-v``: ``-inf`` < numbers <
``inf``; ``nan`` always goes last. The header gets ``aria-sort``.
"""

from __future__ import annotations

from html import escape

__all__ = ["CSS", "SCRIPT", "page"]

CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       margin: 0 auto; padding: 16px 24px 48px; max-width: 1500px; background: #fafbfc; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 1px solid #d5dbe3; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #5b6675; margin: 0 0 8px; } nav a { margin-right: 14px; }
.note { color: #5b6675; font-size: 12px; margin: 4px 0 8px; }
table { border-collapse: collapse; font-size: 12.5px; background: white; }
th, td { border: 1px solid #dfe3e8; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #eef2f6; position: sticky; top: 0; z-index: 1; }
td.t, th.t { text-align: left; }
#summary th { white-space: normal; min-width: 3.5em; vertical-align: bottom; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #dfe7f0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
tbody tr:nth-child(even) { background: #f6f8fa; }
.scroll { max-height: 640px; overflow: auto; display: inline-block; max-width: 100%;
          border: 1px solid #dfe3e8; }
.status { border-radius: 8px; padding: 0 7px; font-size: 11.5px; color: white; }
.s-qc-fail { background: #c62828; } .s-qc-review { background: #d68910; }
.s-qc-ok { background: #2e8540; }
.s-ok { background: #2e8540; } .s-empty_pred { background: #c62828; }
.s-empty_gt { background: #e07b00; } .s-both_empty { background: #7a8590; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.plots img, .case img { max-width: 100%; height: auto; border: 1px solid #dfe3e8;
                        background: white; }
.case { margin-bottom: 26px; }
.case .row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
input#case-filter { margin: 0 0 8px; padding: 3px 6px; width: 260px; }
"""

SCRIPT = """
(function () {
  "use strict";
  function num(v) {
    if (v === "inf") return Infinity;
    if (v === "-inf") return -Infinity;
    if (v === null || v === "" || v === "nan") return NaN;
    return parseFloat(v);
  }
  function value(row, col) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  }
  function compare(numeric, ascending, col) {
    return function (a, b) {
      var x = value(a, col), y = value(b, col);
      if (numeric) {
        var p = num(x), q = num(y), pn = isNaN(p), qn = isNaN(q);
        if (pn || qn) return pn === qn ? 0 : (pn ? 1 : -1);  /* nan last */
        if (p === q) return 0;
        return (p < q) === ascending ? -1 : 1;
      }
      var c = x.localeCompare(y, undefined, {numeric: true});
      return ascending ? c : -c;
    };
  }
  function sortBy(table, th, col) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(compare(th.getAttribute("data-type") === "num", ascending, col));
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter") sortBy(table, th, col);
      });
    });
  });
  var filter = document.getElementById("case-filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var text = filter.value.toLowerCase();
      var rows = document.getElementById("cases").tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (r) {
        r.style.display = r.cells[0].textContent.toLowerCase().indexOf(text) >= 0 ? "" : "none";
      });
    });
  }
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document around ``body`` (already HTML)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
