"""Siemens mosaics: several slices tiled into one 2D frame, de-mosaiced into a 3D volume.

A Siemens EPI (fMRI, diffusion) file with ``MOSAIC`` in its ImageType holds
one volume: its N slices are tiles of an ``m x m`` grid (``m = ceil(sqrt(N))``)
in one frame, and the Siemens CSA image header (private element (0029,1010))
says N (NumberOfImagesInMosaic) and the slice normal (SliceNormalVector).
ImagePositionPatient is that of the whole frame, not of the first tile.

medseg reads the CSA header with nibabel's :mod:`nibabel.nicom.csareader` (the
number of tiles and the slice normal; no CSA parser of its own). It cuts the
tiles itself: nibabel's ``MosaicWrapper`` refuses a frame that is not a whole
number of tiles, which dcm2niix reads (tiles of ``Rows // m`` by ``Columns // m``
from the top left, the rest ignored), and medseg does as dcm2niix. The first
voxel's position is corrected as nibabel's ``dicom_mosaic`` notes derive;
slice k lies at ``position + k * dz * normal``, ``dz`` being SpacingBetweenSlices
(else SliceThickness), as nibabel and dcm2niix place it.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pydicom

from medseg.errors import ImageReadError
from medseg.io.dicom.files import image_type_values, read_dataset
from medseg.io.dicom.multiframe import narrow_integers, pixels_of, rescaled
from medseg.io.lps import LPS_TO_RAS
from medseg.volume import Volume

__all__ = ["is_mosaic", "read_mosaic"]

log = logging.getLogger(__name__)


def is_mosaic(header: pydicom.Dataset) -> bool:
    """True for a single-frame Siemens image whose ImageType says MOSAIC."""
    frames = int(header.get("NumberOfFrames", 1) or 1)
    return frames == 1 and "MOSAIC" in image_type_values(header)


def read_mosaic(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Volume:
    """A Siemens mosaic file as an (x, y, z) Volume (RAS+ mm), z along the CSA slice normal.

    Parameters
    ----------
    path : the mosaic file.
    source : what errors name (default ``path``).

    Returns
    -------
    Volume of shape (columns // m, rows // m, N) with rescale applied; ``meta``
    holds ``dicom_files`` (``[path]``), ``series_uid``, ``study_uid``,
    ``mosaic_slices`` (N) and ``format``.

    Raises
    ------
    ImageReadError
        no CSA header or no NumberOfImagesInMosaic in it, a mosaic of more tiles
        than the frame holds (names the file), or pixels that cannot be decoded.
    """
    source = path if source is None else source
    ds = read_dataset(path)
    count, normal = _csa(ds, path)
    size = int(np.ceil(np.sqrt(count)))
    rows, cols = int(ds.Rows) // size, int(ds.Columns) // size
    if rows < 1 or cols < 1:
        raise ImageReadError(f"mosaic of {count} slices ({size} x {size} tiles) does not fit "
                             f"its {ds.Rows} x {ds.Columns} frame", path)
    frame = pixels_of(ds, path).reshape(int(ds.Rows), int(ds.Columns))
    tiles = np.stack([frame[(k // size) * rows:(k // size + 1) * rows,
                            (k % size) * cols:(k % size + 1) * cols] for k in range(count)])
    slices = rescaled(ds, tiles, range(1))  # the frame's rescale on each of its N tiles
    array = narrow_integers(np.ascontiguousarray(slices.transpose(2, 1, 0)))  # (x, y, z)
    meta = {
        "source": os.fspath(source), "format": "dicom", "dicom_files": [os.fspath(path)],
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")), "mosaic_slices": count,
    }
    log.debug("de-mosaiced %d slices of %s", count, path)
    return Volume(array, LPS_TO_RAS @ _affine_lps(ds, normal, size), meta)


def csa_b_value(ds: pydicom.Dataset) -> float | None:
    """The diffusion b-value (s/mm^2) of a Siemens CSA image header, None where the
    dataset has none (no CSA header, no B_value, or one nibabel cannot read)."""
    with warnings.catch_warnings():  # nibabel.nicom warns that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    try:
        csa = csareader.get_csa_header(ds)
        return None if not csa else csareader.get_b_value(csa)
    except (csareader.CSAReadError, KeyError, TypeError, ValueError, IndexError):
        return None


def _csa(ds: pydicom.Dataset, path) -> tuple[int, np.ndarray | None]:
    """(NumberOfImagesInMosaic, SliceNormalVector or None) from the CSA image header."""
    with warnings.catch_warnings():  # nibabel.nicom warns that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    try:
        csa = csareader.get_csa_header(ds)
        count = csareader.get_n_mosaic(csa) if csa else None
        normal = csareader.get_slice_normal(csa) if csa else None
    except (csareader.CSAReadError, KeyError, TypeError, ValueError) as exc:
        raise ImageReadError(f"ImageType says MOSAIC but its Siemens CSA header cannot be read "
                             f"({exc})", path) from exc
    if not count:
        raise ImageReadError("ImageType says MOSAIC but the Siemens CSA header gives no "
                             "NumberOfImagesInMosaic", path)
    return int(count), None if normal is None else np.asarray(normal, dtype=np.float64)


def _affine_lps(ds: pydicom.Dataset, normal: np.ndarray | None, size: int) -> np.ndarray:
    """Voxel (x = column, y = row, z = tile) -> LPS mm of the de-mosaiced slices.

    ImagePositionPatient is that of a slice-sized frame whose centre is the
    mosaic's: the first voxel lies ``(Columns - Columns / m) / 2`` columns and
    ``(Rows - Rows / m) / 2`` rows from it (nibabel's ``dicom_mosaic`` notes; the
    unrounded tile size, as nibabel and dcm2niix take it).
    """
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    spacing = [float(v) for v in ds.PixelSpacing]
    step_x, step_y = iop[:3] * spacing[1], iop[3:] * spacing[0]
    if normal is None:
        normal = np.cross(iop[:3], iop[3:])
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1] = step_x, step_y
    affine[:3, 2] = normal * _slice_step_mm(ds)
    columns, rows = int(ds.Columns), int(ds.Rows)
    shift = ((columns - columns / size) / 2, (rows - rows / size) / 2)
    affine[:3, 3] = np.array([float(v) for v in ds.ImagePositionPatient]) \
        + shift[0] * step_x + shift[1] * step_y
    return affine


def _slice_step_mm(ds: pydicom.Dataset) -> float:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = ds.get(keyword)
        if value not in (None, "") and float(value) > 0:
            return float(value)
    return 1.0
