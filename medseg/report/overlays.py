"""Overlay images: contours of segmentations over three orthogonal slices of the image.

Each PNG shows an axial, a coronal and a sagittal slice (radiological
convention, physical aspect ratio; see :mod:`medseg.report.planes`) through
one point, the image at a display window, and contours:

* comparing a prediction with the ground truth: ground truth in green (solid),
  prediction in red (dashed), and the planes cross at the densest error
  (yellow ``+``);
* a single label map (``medseg predict --preview``): one colour per label,
  planes through the centre of the biggest structure.

Either can carry an uncertainty map (``medseg predict --save-uncertainty``, its first
channel: the normalised entropy, 0-1) as a heat layer (magma, voxels above 0.05), so that
the report can set the uncertainty beside the error through the same planes.

Display window: a CT window W400/L40 (``[-160, 240]`` HU) when the image looks
like CT (minimum below -500), else the 1st to 99th percentile (MR).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from medseg.errors import GeometryError, UsageError
from medseg.io.atomic import atomic_write_bytes
from medseg.report._figure import figure_png, new_figure
from medseg.report.locate import error_centre, labels_near, structure_centre
from medseg.report.planes import Plane, RasGrid, cut_planes, to_ras
from medseg.volume import Volume

__all__ = ["Window", "choose_window", "render_overlay_png", "overlay_png"]

log = logging.getLogger(__name__)

Window = str | tuple[float, float] | None
GT_COLOUR = "#2ee64d"
PRED_COLOUR = "#ff3b3b"
CT_WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # W400 / L40
UNCERTAINTY_SHOWN = 0.05  # the heat layer shows uncertainty above this (0-1)


def choose_window(image: np.ndarray, window: Window = None) -> tuple[float, float]:
    """Display range (low, high) of ``image``.

    ``window`` is None (auto: ``"ct"`` when ``image.min() < -500``, else
    ``"mr"``), ``"ct"`` (W400/L40), ``"mr"`` (1st-99th percentile), or an
    explicit ``(low, high)`` in image units.
    """
    if window is None:
        window = "ct" if float(np.min(image)) < -500 else "mr"
    if isinstance(window, str):
        if window == "ct":
            return CT_WINDOW
        if window == "mr":
            return _percentile_window(image)
        raise UsageError(f"unknown window {window!r}: expected 'ct', 'mr' or (low, high)")
    low, high = (float(v) for v in window)
    if not high > low:
        raise UsageError(f"window (low, high) needs high > low, got ({low}, {high})")
    return low, high


def _percentile_window(image: np.ndarray) -> tuple[float, float]:
    flat = np.asarray(image).reshape(-1)
    sample = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.0]))
    return (low, high) if high > low else (low, low + 1.0)


def render_overlay_png(
    image: Volume,
    label: Volume,
    out_png: str | os.PathLike,
    pred: Volume | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    window: Window = None,
    title: str | None = None,
) -> None:
    """Write a PNG of three slices of ``image`` with the contours of ``label`` (and ``pred``).

    Parameters
    ----------
    image : the intensity volume (CT in HU, or MR); channel 0 if it has channels.
    label : a label map on the same grid; the ground truth when ``pred`` is given.
    out_png : output path, written atomically.
    pred : optional prediction to compare with ``label``: green = ``label``,
        red dashed = ``pred``, planes through the densest disagreement.
        Without it, ``label`` is drawn one colour per label, with planes through
        the centre of its biggest structure.
    label_names : label value -> name, for the legend.
    window : display window, see :func:`choose_window`.
    title : figure title (default: none).

    Raises
    ------
    GeometryError
        If the volumes are not on the same grid.
    """
    png = overlay_png(image, label, pred, label_names=label_names, window=window, title=title)
    atomic_write_bytes(out_png, png)
    log.debug("wrote overlay %s", out_png)


def overlay_png(
    image: Volume | None,
    label: Volume,
    pred: Volume | None = None,
    *,
    label_names: Mapping[int, str] | None = None,
    window: Window = None,
    title: str | None = None,
    uncertainty: Volume | None = None,
) -> bytes:
    """PNG bytes of :func:`render_overlay_png`; ``image`` None gives a black background;
    ``uncertainty`` (on the label's grid; channel 0 when it has channels) adds its heat
    layer (module docstring) without moving the planes."""
    grid = _ras_grid(image, label, pred, uncertainty)
    names = dict(label_names or {})
    arrays = grid.arrays
    centre = None
    caption = ""
    if "pred" in arrays:
        centre = error_centre(arrays["gt"], arrays["pred"], grid.spacing_mm)
        if centre is not None:
            near = labels_near(arrays["gt"], arrays["pred"], centre, grid.spacing_mm)
            caption = "largest error: " + ", ".join(names.get(v, f"label {v}") for v in near[:3])
        else:
            caption = "prediction equals ground truth"
    if centre is None:
        centre = structure_centre(arrays["gt"])
    if centre is None:
        centre = tuple(n // 2 for n in grid.shape)
        caption = caption or "empty label map"
    low_high = choose_window(arrays["image"], window) if "image" in arrays else (0.0, 1.0)
    planes = cut_planes(grid, centre)  # type: ignore[arg-type]
    return _draw(planes, low_high, names, title, caption)


def _ras_grid(image: Volume | None, label: Volume, pred: Volume | None,
              uncertainty: Volume | None = None) -> RasGrid:
    volumes = {"gt": _spatial(label, "label")}
    for key, volume in (("pred", pred), ("image", image), ("uncertainty", uncertainty)):
        if volume is not None:
            volumes[key] = _spatial(volume, key)
    first = volumes["gt"]
    for key, vol in volumes.items():
        if not first.same_grid(vol):
            raise GeometryError(
                f"{key} is not on the label's grid: shape {vol.spatial_shape} vs "
                f"{first.spatial_shape}, spacing {vol.spacing_mm} vs {first.spacing_mm}",
                vol.meta.get("path") or vol.meta.get("source"),
            )
    for key in ("gt", "pred"):
        if key in volumes:
            volumes[key] = volumes[key].with_array(_as_labels(volumes[key].array))
    return to_ras(volumes)


def _spatial(volume: Volume, name: str) -> Volume:
    if volume.has_channels:
        log.info("%s has %d channels; showing channel 0", name, volume.shape[0])
        return volume.with_array(volume.array[0])
    return volume


def _as_labels(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return array
    return np.rint(array).astype(np.int32)


def _draw(
    planes: Sequence[Plane],
    window: tuple[float, float],
    names: dict[int, str],
    title: str | None,
    caption: str,
) -> bytes:
    widths = [p.size_mm[0] for p in planes]
    tallest = max(p.size_mm[1] for p in planes)
    scale = min(11.0 / sum(widths), 4.6 / tallest)  # inches per mm
    fig = new_figure(sum(widths) * scale + 0.9, tallest * scale + 1.25, facecolor="black")
    grid = fig.add_gridspec(1, len(planes), width_ratios=widths, left=0.03, right=0.97,
                            top=1 - 0.62 / (tallest * scale + 1.25),
                            bottom=0.5 / (tallest * scale + 1.25), wspace=0.12)
    compare = "pred" in planes[0].slices
    present: set[int] = set()
    for i, plane in enumerate(planes):
        ax = fig.add_subplot(grid[0, i])
        present |= _draw_plane(ax, plane, window, compare)
    _legend(fig, compare, present, names, "uncertainty" in planes[0].slices)
    heading = " — ".join(t for t in (title, caption) if t)
    if heading:
        fig.suptitle(heading, color="white", fontsize=10, y=0.985)
    return figure_png(fig)


def _draw_plane(ax, plane: Plane, window: tuple[float, float], compare: bool) -> set[int]:
    width, height = plane.size_mm
    extent = (0.0, width, height, 0.0)
    background = plane.slices.get("image")
    if background is None:
        background = np.zeros_like(plane.slices["gt"], dtype=np.float32)
    ax.imshow(background, cmap="gray", vmin=window[0], vmax=window[1], extent=extent,
              interpolation="bilinear")
    if "uncertainty" in plane.slices:
        heat = np.ma.masked_less_equal(plane.slices["uncertainty"].astype(np.float32),
                                       UNCERTAINTY_SHOWN)
        ax.imshow(heat, cmap="magma", vmin=0.0, vmax=1.0, alpha=0.7, extent=extent,
                  interpolation="nearest")
    rows, cols = plane.slices["gt"].shape
    xs = (np.arange(cols) + 0.5) * plane.pixel_mm[1]
    ys = (np.arange(rows) + 0.5) * plane.pixel_mm[0]
    present: set[int] = set()
    if compare:
        present |= _contours(ax, xs, ys, plane.slices["gt"], GT_COLOUR, "solid")
        present |= _contours(ax, xs, ys, plane.slices["pred"], PRED_COLOUR, "dashed")
        ax.plot(*plane.marker_mm, marker="+", color="yellow", markersize=14, mew=1.5)
    else:
        present |= _contours(ax, xs, ys, plane.slices["gt"], None, "solid")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{plane.name}  {plane.position}", color="white", fontsize=9)
    _edge_letters(ax, plane.edges)
    return present


def _contours(ax, xs, ys, labels: np.ndarray, colour: str | None, style: str) -> set[int]:
    values = [int(v) for v in np.unique(labels) if v != 0]
    for value in values:
        mask = (labels == value).astype(np.float32)
        if mask.shape[0] < 2 or mask.shape[1] < 2:
            continue
        ax.contour(xs, ys, mask, levels=[0.5], colors=[colour or _label_colour(value)],
                   linewidths=1.1, linestyles=style)
    return set(values)


def _label_colour(value: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab20"]((value - 1) % 20)


def _edge_letters(ax, edges: tuple[str, str, str, str]) -> None:
    style = {"color": "#ffd24d", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = edges
    ax.text(0.015, 0.5, left, ha="left", va="center", **style)
    ax.text(0.985, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.985, top, ha="center", va="top", **style)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **style)


def _legend(fig, compare: bool, present: set[int], names: dict[int, str],
            uncertainty: bool = False) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if compare:
        handles = [
            Line2D([], [], color=GT_COLOUR, lw=1.5, label="ground truth"),
            Line2D([], [], color=PRED_COLOUR, lw=1.5, ls="--", label="prediction"),
            Line2D([], [], color="yellow", marker="+", lw=0, markersize=10, label="largest error"),
        ]
    else:
        handles = [Line2D([], [], color=_label_colour(v), lw=2, label=names.get(v, f"label {v}"))
                   for v in sorted(present)[:12]]
    if uncertainty:
        from matplotlib import colormaps

        handles.append(Patch(color=colormaps["magma"](0.75), label="uncertainty (entropy)"))
    if handles:
        legend = fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6),
                            frameon=False, fontsize=8)
        for text in legend.get_texts():
            text.set_color("white")
