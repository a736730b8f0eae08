"""DICOM geometry, once: image planes in LPS mm, planes on a label grid, source slices.

An image plane (a slice, or a frame of a multi-frame object) is placed by its
Image Position / Orientation (Patient) and Pixel Spacing (PS3.3 C.7.6.2.1.1):
pixel (row r, column c) lies at ``IPP + c * PixelSpacing[1] * IOP[:3] +
r * PixelSpacing[0] * IOP[3:]`` in LPS mm (:func:`slice_pixel_to_lps`).

A label map is a :class:`~medseg.volume.Volume` indexed (x, y, z) with a voxel ->
RAS+ mm affine. :func:`frame_steps` finds, for one plane, the label voxel under
its pixel (0, 0) and the voxel steps for one row down and one column right,
checks that they are whole voxels along grid axes, and so never assumes an
axis order. Every DICOM label writer (SEG, RTSTRUCT) and reader uses these
functions; LPS <-> RAS goes through :mod:`medseg.io.lps`.

:func:`read_sources` reads the headers of the slices a derived object
references and fills blank UIDs of anonymised series in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import DataError, GeometryError
from medseg.io.dicom.files import read_dataset
from medseg.io.lps import flip_lps_ras
from medseg.volume import Volume

__all__ = [
    "slice_pixel_to_lps", "lps_to_voxel", "frame_steps", "frame_indices", "frames_for_sources",
    "read_sources", "GRID_TOL_VOXELS",
]

log = logging.getLogger(__name__)

#: How far (in voxels) a slice pixel may sit from a label voxel centre and still be on the grid.
GRID_TOL_VOXELS = 0.05


def slice_pixel_to_lps(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometry of one DICOM image plane: LPS mm of pixel (0, 0) and the LPS mm steps per
    row and per column.

    Parameters
    ----------
    dataset : anything with ImagePositionPatient, ImageOrientationPatient and PixelSpacing.

    Returns
    -------
    origin_lps : (3,) mm of pixel (row 0, column 0).
    step_row_lps : (3,) mm per row (r + 1), ``PixelSpacing[0] * IOP[3:]``.
    step_col_lps : (3,) mm per column (c + 1), ``PixelSpacing[1] * IOP[:3]`` (IOP[:3] is the
        direction along a row, in which the column index grows).
    """
    iop = np.asarray([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
    spacing = [float(v) for v in dataset.PixelSpacing]
    origin = np.asarray([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
    return origin, iop[3:] * spacing[0], iop[:3] * spacing[1]


def lps_to_voxel(affine: np.ndarray, points_lps: np.ndarray, vectors: bool = False) -> np.ndarray:
    """Voxel coordinates (..., 3) in (x, y, z) of LPS mm points, or of displacement vectors
    (``vectors=True``: no translation), for a grid with the voxel -> RAS+ mm ``affine``."""
    inverse = np.linalg.inv(affine)
    out = flip_lps_ras(points_lps) @ inverse[:3, :3].T
    return out if vectors else out + inverse[:3, 3]


def _unit_step(step: np.ndarray, what: str, path: str) -> np.ndarray:
    """Check that a voxel-space step is +-1 along exactly one axis; return it as int."""
    rounded = np.rint(step)
    if np.abs(step - rounded).max() > GRID_TOL_VOXELS or np.abs(rounded).sum() != 1:
        raise GeometryError(
            f"one {what} of the DICOM slice moves by {np.round(step, 3).tolist()} label voxels, "
            "expected one voxel along one axis: the label map is not on the series' grid "
            "(predict on the DICOM series itself)",
            path,
        )
    return rounded.astype(np.int64)


def frame_steps(labels: Volume, dataset, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where one image plane lies in ``labels``: voxel of pixel (0, 0), voxel step per row and
    per column (each +-1 along one axis), all (3,) int in (x, y, z).

    ``dataset`` is anything with the tags of one image plane (Rows, Columns,
    PixelSpacing, Image Position / Orientation (Patient)): a source slice, or a
    DICOM-SEG frame's plane. GeometryError naming ``path`` if the plane is not on
    the grid of ``labels`` or reaches outside it.
    """
    rows, cols = int(dataset.Rows), int(dataset.Columns)
    origin, step_row, step_col = slice_pixel_to_lps(dataset)
    start = lps_to_voxel(labels.affine, origin)
    start_int = np.rint(start)
    if np.abs(start - start_int).max() > GRID_TOL_VOXELS:
        raise GeometryError(
            f"slice origin falls at label voxel {np.round(start, 3).tolist()}, between voxel "
            "centres: the label map is not on the series' grid",
            path,
        )
    d_row = _unit_step(lps_to_voxel(labels.affine, step_row, vectors=True), "row", path)
    d_col = _unit_step(lps_to_voxel(labels.affine, step_col, vectors=True), "column", path)
    first = start_int.astype(np.int64)
    corners = np.stack([first + r * d_row + c * d_col
                        for r in (0, rows - 1) for c in (0, cols - 1)])
    shape = np.asarray(labels.spatial_shape)
    if (corners < 0).any() or (corners >= shape).any():
        raise GeometryError(
            f"slice of {rows}x{cols} pixels reaches label voxels {corners.tolist()} outside the "
            f"label grid of shape {tuple(shape)}",
            path,
        )
    return first, d_row, d_col


def frame_indices(labels: Volume, dataset, path: str) -> tuple[np.ndarray, ...]:
    """(rows, cols) index arrays into ``labels.array`` (x, y, z) for one image plane
    (see :func:`frame_steps`)."""
    first, d_row, d_col = frame_steps(labels, dataset, path)
    r = np.arange(int(dataset.Rows))[:, None, None]
    c = np.arange(int(dataset.Columns))[None, :, None]
    index = first[None, None, :] + r * d_row + c * d_col  # (rows, cols, 3)
    return index[..., 0], index[..., 1], index[..., 2]


def frames_for_sources(
    labels: Volume, sources: Sequence, paths: Sequence[str] | None = None
) -> np.ndarray:
    """Label frames aligned with the source slices.

    Parameters
    ----------
    labels : integer label Volume (x, y, z), RAS affine, on the series' grid.
    sources : pydicom datasets of the single-frame source slices (any order).
    paths : their file names, for error messages.

    Returns
    -------
    (n_slices, rows, cols) array with ``labels.array.dtype``; frame ``i`` is
    indexed exactly like the pixels of ``sources[i]``.
    """
    if labels.has_channels:
        raise GeometryError(f"a label map is (x, y, z), got shape {labels.shape}")
    names = list(paths) if paths is not None else [""] * len(sources)
    frames = [labels.array[frame_indices(labels, ds, name)] for ds, name in zip(sources, names)]
    return np.stack(frames)


def _derived_uid(kind: str, seeds: Sequence[str]) -> str:
    """A deterministic UID for an anonymised series whose UID was blanked."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[kind, *seeds]))


def _fill_missing_uids(sources: list, paths: Sequence[str], what: str) -> None:
    """Give anonymised sources (blank UIDs) the UIDs highdicom needs, in memory only.

    SOP Class / Instance UIDs come from each file's meta header; blank Study /
    Series / Frame of Reference UIDs get one deterministic derived UID for the
    whole series (logged as a warning: the object then references that UID).
    """
    instance_uids = []
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "")) and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not str(ds.get("SOPInstanceUID", "")) and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
        instance_uids.append(str(ds.get("SOPInstanceUID", "")))
    for i, ds in enumerate(sources):
        if not str(ds.get("SOPClassUID", "")) or not instance_uids[i]:
            raise DataError("DICOM slice has no SOP Class / SOP Instance UID", paths[i])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")) for ds in sources}
        if values == {""}:
            uid = _derived_uid(keyword, sorted(instance_uids))
            log.warning("%s: source series has a blank %s (anonymised?); the %s "
                        "references the derived UID %s", Path(paths[0]).parent, keyword, what, uid)
            for ds in sources:
                setattr(ds, keyword, uid)


def read_sources(source_files: Sequence[str | os.PathLike], what: str = "DICOM-SEG"
                 ) -> tuple[list, list[str]]:
    """Headers (pixels skipped) of the source slices a derived object (``what``) references.

    Blank UIDs are filled in memory (:func:`_fill_missing_uids`); returns the
    datasets and their paths. ImageReadError / DataError name the bad file.
    """
    paths = [os.fspath(p) for p in source_files]
    if not paths:
        raise DataError(f"no source DICOM files given for the {what}")
    sources = []
    for path in paths:
        sources.append(read_dataset(path, "DICOM source slice", pixels=False))
        geometry_tags = ("ImagePositionPatient", "ImageOrientationPatient")
        if any(tag not in sources[-1] for tag in geometry_tags):
            raise DataError("DICOM slice lacks Image Position/Orientation (Patient)", path)
    _fill_missing_uids(sources, paths, what)
    return sources, paths
