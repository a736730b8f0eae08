"""Visual quality-control report of an evaluation: one self-contained HTML file.

Public API::

    write_report(results_csv, out_html, labels=None,
                 worst=WorstCases(n=5, images_dir=None, pred_dir=None, gt_dir=None,
                                  window=None), compare=None) -> Path
    render_overlay_png(image, label, out_png, pred=None)   # used by predict --preview
    read_label_names(path) -> {value: name}             # = medseg.io.cases.read_label_names

Conventions
-----------
* The HTML embeds everything (PNG images as base64 ``data:`` URIs, inline CSS
  and JavaScript) and its Content-Security-Policy forbids network access.
* Overlays are shown in the **radiological convention**: axial and coronal
  slices with the patient's right on the viewer's left, sagittal slices with
  anterior on the left, superior up; letters at the edges name the
  directions. Slices keep their physical aspect ratio (from ``spacing_mm``).
* Ground truth contours are green (solid), prediction contours red (dashed);
  the three planes cross at the densest error (Gaussian-smoothed
  ``pred != gt``, 6 mm).
* Display window: W400/L40 when the image looks like CT (minimum below -500
  HU), else the 1st-99th percentile.
* Summary statistics are over finite values; status counts explain the rest.
  They are read from the evaluation's ``summary.json`` (:class:`medseg.results.Results`),
  never recomputed.

matplotlib (the ``report`` extra, ``pip install medseg[report]``) is imported
only when a plot is drawn, on an Agg canvas.
"""

from __future__ import annotations

from medseg.io.cases import read_label_names  # re-exported: public since the report had it
from medseg.report.html import WorstCases, write_report
from medseg.report.overlays import render_overlay_png

__all__ = ["WorstCases", "write_report", "render_overlay_png", "read_label_names"]
