"""HTML pieces shared by the report's sections: metric titles, tables, cells, images.

One home for what :mod:`medseg.report.html` (the report) and
:mod:`medseg.report.compare` (its comparison section) both write, so that
neither imports the other's private helpers. Numbers are shown rounded and
sorted by their full value (``data-v``, read by the table script of
:mod:`medseg.report.template`).
"""

from __future__ import annotations

import base64
import math
from html import escape

__all__ = ["TITLES", "html_table", "img_tag", "text_cell", "status_cell", "num_cell",
           "data_value", "fmt_number"]

#: Table titles of the metrics (keys of :data:`medseg.metrics.METRIC_KEYS`), in display order.
TITLES: dict[str, str] = {
    "dice": "Dice", "iou": "IoU", "accuracy": "Accuracy", "hd_mm": "HD (mm)",
    "hd95_mm": "HD95 (mm)", "avd_mm": "AVD (mm)", "assd_mm": "ASSD (mm)", "nsd": "NSD",
    "vol_gt_ml": "Vol GT (mL)", "vol_pred_ml": "Vol pred (mL)",
}


def html_table(table_id: str | None, head: list[tuple[str, bool]], body: list[str]) -> str:
    """A sortable ``<table>``: ``head`` is (title, numeric) per column, ``body`` the rows' HTML."""
    ident = f" id=\"{table_id}\"" if table_id else ""
    ths = "".join(
        f"<th data-type=\"num\">{escape(t)}</th>" if numeric
        else f"<th class=\"t\">{escape(t)}</th>"
        for t, numeric in head
    )
    return (f"<table class=\"sortable\"{ident}><thead><tr>{ths}</tr></thead>"
            f"<tbody>\n{chr(10).join(body)}\n</tbody></table>")


def img_tag(png: bytes, alt: str, ident: str) -> str:
    """An ``<img>`` of ``png`` inlined as a ``data:`` URI (the page loads nothing from outside)."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<img id=\"{escape(ident)}\" alt=\"{escape(alt)}\" "
            f"src=\"data:image/png;base64,{data}\">")


def text_cell(text: str) -> str:
    """A left-aligned text cell, escaped."""
    return f"<td class=\"t\">{escape(str(text))}</td>"


def status_cell(status: str) -> str:
    """A cell holding a status badge (``ok``, ``empty_pred``, ...) that sorts by its name."""
    return (f"<td class=\"t\" data-v=\"{status}\"><span class=\"status s-{status}\">"
            f"{escape(status.replace('_', ' '))}</span></td>")


def num_cell(value: float, digits: int) -> str:
    """A numeric cell: ``digits`` decimals shown, the full value in ``data-v`` for sorting."""
    return f"<td data-v=\"{data_value(value)}\">{fmt_number(value, digits)}</td>"


def data_value(value: float) -> str:
    """``value`` as the table script sorts it: ``repr``, or ``nan`` / ``inf`` / ``-inf``."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def fmt_number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals for display; NaN as a dash, infinities as signs."""
    value = float(value)
    if math.isnan(value):
        return "&ndash;"
    if math.isinf(value):
        return "&infin;" if value > 0 else "&minus;&infin;"
    return f"{value:.{digits}f}"
