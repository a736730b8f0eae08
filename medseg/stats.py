"""Per-structure statistics of an image under a segmentation (``medseg stats``).

For each label of a segmentation: its voxel count and volume, the intensity
statistics of the image inside it, its centroid and its extent in world
coordinates, as TotalSegmentator's ``--statistics`` gives them. One row per
(case, label), columns :data:`STATS_COLUMNS`:

* ``voxels`` and ``volume_ml`` (voxels x the voxel volume, 1 mL = 1000 mm^3);
* ``mean``, ``std`` (population, ddof=0), ``median``, ``p5``, ``p95``, ``min``,
  ``max`` of the image values inside the structure, in the image's units (HU
  for CT); percentiles as :func:`numpy.percentile` (``method="linear"``);
* ``centroid_r_mm``, ``centroid_a_mm``, ``centroid_s_mm``: the mean of the
  structure's voxel centres in RAS+ world mm (the affine applied to the mean
  voxel index);
* ``extent_r_mm``, ``extent_a_mm``, ``extent_s_mm``: the size along each world
  axis (R, A, S) of the world-axis-aligned box holding the structure's voxels
  as whole voxels: the spread of its voxel centres along that axis plus the
  extent of one voxel along it (``sum_j |affine[axis, j]|``). On a grid aligned
  with the world axes this is (index range + 1) x spacing.

A label absent from the segmentation (listed in the label file only) gets 0
voxels and NaN elsewhere. All statistics come from one pass over the voxels:
the foreground voxels are grouped by label with one stable sort of their
labels, and each label's statistics are then taken on its contiguous group.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryError
from medseg.io.cases import label_names_of
from medseg.volume import Volume

__all__ = ["STATS_COLUMNS", "structure_stats", "stats_of_files", "stats_csv_text", "write_stats"]

log = logging.getLogger(__name__)

_INTENSITY = ("mean", "std", "median", "p5", "p95", "min", "max")
_AXES = ("r", "a", "s")
STATS_COLUMNS = (
    ("case", "label", "label_name", "voxels", "volume_ml") + _INTENSITY
    + tuple(f"centroid_{a}_mm" for a in _AXES) + tuple(f"extent_{a}_mm" for a in _AXES)
)

Labels = Mapping[int, str] | Sequence[int] | None


def structure_stats(image: Volume, seg: Volume, labels: Labels = None, case: str = ""
                    ) -> list[dict[str, Any]]:
    """Statistics of each structure of ``seg`` over ``image`` (see the module docstring).

    Parameters
    ----------
    image : the (x, y, z) image, or (1, x, y, z).
    seg : the (x, y, z) label map (non-negative integers, 0 = background) on the
        same grid as ``image`` (shape and affine within 1e-3 mm).
    labels : ``{label: name}`` or a list of labels: the rows, in label order
        (absent ones get 0 voxels, label 0 is skipped); default every non-zero
        label of ``seg``.
    case : the ``case`` column.

    Returns
    -------
    list of dict
        One row per label with the keys of :data:`STATS_COLUMNS`.

    Raises
    ------
    GeometryError
        ``image`` and ``seg`` on different grids (names both sources), or an
        image with several channels.
    DataError
        Non-integer, negative or NaN labels.

    Examples
    --------
    >>> seg = Volume(np.array([[[0, 1], [1, 2]]], np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    >>> image = seg.with_array(np.array([[[5.0, 10.0], [20.0, 7.0]]]))
    >>> row = structure_stats(image, seg)[0]
    >>> row["voxels"], round(row["volume_ml"], 6), row["mean"]
    (2, 0.016, 15.0)
    >>> row["centroid_a_mm"], row["extent_a_mm"]
    (1.0, 4.0)
    """
    from medseg.metrics import check_label_array

    values = _single_channel(image)
    _check_same_grid(image, seg)
    label_map = check_label_array(seg.array, "segmentation", seg.meta.get("source"))
    order, groups = _group_voxels(label_map, values)
    names = label_names_of(labels) or {}
    wanted = sorted(k for k in names if k != 0) if labels is not None else sorted(groups)
    unlisted = sorted(set(groups) - set(wanted))
    if unlisted:
        log.warning("%s: labels %s are not in the label list and are left out",
                    case or "segmentation", unlisted)
    grid = _Grid(label_map.shape, order, seg.affine)
    return [{"case": case, "label": k, "label_name": names.get(k, ""),
             **_label_row(groups.get(k), grid, seg.voxel_volume_ml)} for k in wanted]


def _single_channel(image: Volume) -> np.ndarray:
    if not image.has_channels:
        return image.array
    if image.shape[0] != 1:
        raise GeometryError(f"image has {image.shape[0]} channels (shape {image.shape}); "
                            "statistics need one (x, y, z) image", image.meta.get("source"))
    return image.array[0]


def _check_same_grid(image: Volume, seg: Volume) -> None:
    if image.same_grid(seg, tol_mm=1e-3):
        return
    what = (f"shape {seg.spatial_shape} vs {image.spatial_shape}"
            if image.spatial_shape != seg.spatial_shape else
            f"affines differ by up to {np.abs(image.affine - seg.affine).max():.6g} mm")
    raise GeometryError(
        f"segmentation {seg.meta.get('source', '(array)')} and image "
        f"{image.meta.get('source', '(array)')} are on different grids ({what}); resample the "
        "segmentation onto the image grid")


def _group_voxels(label_map: np.ndarray, values: np.ndarray
                  ) -> tuple[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``(order, {label: (flat indices, image values)})`` of the non-zero labels, in one pass.

    The flat indices are in ``order``, the arrays' memory order (``"F"`` when
    both are Fortran-ordered, as nibabel gives them: no copy; else ``"C"``).
    """
    order = "F" if label_map.flags.f_contiguous and values.flags.f_contiguous else "C"
    flat_labels = label_map.ravel(order=order)
    foreground = np.flatnonzero(flat_labels)
    fg_labels = flat_labels[foreground]
    by_label = np.argsort(fg_labels, kind="stable")  # a radix sort for 8- and 16-bit labels
    foreground, fg_labels = foreground[by_label], fg_labels[by_label]
    fg_values = values.ravel(order=order)[foreground]
    if not fg_labels.size:
        return order, {}
    bounds = np.concatenate([[0], np.flatnonzero(fg_labels[1:] != fg_labels[:-1]) + 1,
                             [fg_labels.size]])
    return order, {int(fg_labels[a]): (foreground[a:b], fg_values[a:b])
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True)}


@dataclass(frozen=True)
class _Grid:
    """How flat indices map to voxel indices (shape, memory order) and to world mm (affine)."""

    shape: tuple[int, ...]
    order: str
    affine: np.ndarray


def _label_row(group: tuple[np.ndarray, np.ndarray] | None, grid: _Grid, voxel_ml: float
               ) -> dict[str, float]:
    if group is None:
        return {"voxels": 0, "volume_ml": 0.0, **dict.fromkeys(STATS_COLUMNS[5:], math.nan)}
    flat, values = group
    return {"voxels": int(flat.size), "volume_ml": float(flat.size * voxel_ml),
            **_intensity(values), **_geometry(flat, grid)}


def _intensity(values: np.ndarray) -> dict[str, float]:
    """Intensity statistics in float64, computed on the image's own dtype (no copy)."""
    p5, median, p95 = np.percentile(values, (5, 50, 95))
    return {"mean": float(values.mean(dtype=np.float64)),
            "std": float(values.std(dtype=np.float64)), "median": float(median),
            "p5": float(p5), "p95": float(p95), "min": float(values.min()),
            "max": float(values.max())}


def _geometry(flat: np.ndarray, grid: _Grid) -> dict[str, float]:
    """Centroid (RAS mm) and world-axis extent (mm) of the voxels at ``flat``."""
    ijk = np.unravel_index(flat, grid.shape, order=grid.order)
    rotation = grid.affine[:3, :3]
    centroid = rotation @ np.array([c.mean() for c in ijk]) + grid.affine[:3, 3]
    if np.count_nonzero(rotation, axis=1).max() == 1:  # world axes along the grid's axes
        low, high = np.array([c.min() for c in ijk]), np.array([c.max() for c in ijk])
        spread = np.abs(rotation) @ (high - low)
    else:
        world = rotation @ np.stack(ijk).astype(np.float64)
        spread = world.max(axis=1) - world.min(axis=1)
    extent = spread + np.abs(rotation).sum(axis=1)
    return {**{f"centroid_{a}_mm": float(v) for a, v in zip(_AXES, centroid, strict=True)},
            **{f"extent_{a}_mm": float(v) for a, v in zip(_AXES, extent, strict=True)}}


# -- files and folders -------------------------------------------------------------------------
def stats_of_files(image: str | os.PathLike, seg: str | os.PathLike,
                   labels: str | os.PathLike | Labels = None,
                   stack: int | str | None = None) -> list[dict[str, Any]]:
    """:func:`structure_stats` of an image file and its segmentation, or of two folders.

    Parameters
    ----------
    image, seg : two image files (the case is the segmentation's file name
        without extension; the image may be a DICOM series folder), or two
        folders whose files are paired by case name
        (:func:`medseg.io.cases.images_by_case`; an image may carry nnU-Net's
        ``_0000`` channel suffix). One table, cases in name order.
    labels : a label-name file (:func:`medseg.io.cases.read_label_names`), a
        ``{label: name}`` mapping or a list of labels (see :func:`structure_stats`).
    stack : the image stack of a DICOM image holding several (number or name,
        :func:`medseg.io.read_volume`).

    Raises
    ------
    ImageReadError, UsageError
        Missing or unreadable paths, unpaired cases (all listed).
    GeometryError, DataError
        As :func:`structure_stats`, naming the files.
    """
    from medseg.io import read_volume

    names = label_names_of(labels)
    rows = []
    for case, image_path, seg_path in _pairs(Path(image), Path(seg)):
        rows += structure_stats(read_volume(image_path, stack=stack),
                                read_volume(seg_path, channels=False),
                                names, case)
    return rows


def _pairs(image: Path, seg: Path) -> list[tuple[str, Path, Path]]:
    """``(case, image, seg)``: two files (or a DICOM image folder), or two folders' cases."""
    from medseg.io.cases import case_name, pair_folders

    if not (image.is_dir() and seg.is_dir()):  # read_volume names a missing or unreadable path
        return [(case_name(seg), image, seg)]
    return pair_folders(image, seg, ("an image", "a segmentation"), strip_channel=True)


def stats_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV text with the columns :data:`STATS_COLUMNS` (NaN written ``nan``)."""
    from medseg.results import csv_text

    return csv_text(STATS_COLUMNS, rows)


def write_stats(rows: Sequence[Mapping[str, Any]], out_csv: str | os.PathLike) -> Path:
    """Write the rows to ``out_csv`` atomically (its folder is created); returns the path."""
    from medseg.io.atomic import atomic_write_text

    atomic_write_text(out_csv, stats_csv_text(rows))
    log.info("wrote %s (%d rows)", out_csv, len(rows))
    return Path(out_csv)
