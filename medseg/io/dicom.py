"""DICOM image series (one folder) through SimpleITK's ``ImageSeriesReader``.

GDCM (inside SimpleITK) groups the folder's files by SeriesInstanceUID and
decodes the pixels, applying RescaleSlope/RescaleIntercept. Before reading,
medseg checks the geometry itself from each file's ImagePositionPatient and
ImageOrientationPatient (read with pydicom, pixels skipped): slices are
ordered by their position along the slice normal, and a missing slice,
duplicated positions, uneven spacing or a sheared stack (gantry tilt) is an
error instead of a silently stretched volume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.io.sitk import sitk_to_volume
from medseg.volume import Volume

__all__ = [
    "read_dicom_series", "list_series", "SeriesInfo", "SPACING_RTOL", "SPACING_ATOL_MM",
    "NOT_IMAGES", "READ_ERRORS",
]

log = logging.getLogger(__name__)

#: A gap between neighbouring slices may differ from the median gap by this
#: fraction of it, plus :data:`SPACING_ATOL_MM`, before the series is rejected.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
_TAGS = [
    "ImagePositionPatient", "ImageOrientationPatient", "SeriesInstanceUID",
    "StudyInstanceUID", "SeriesDescription", "SOPClassUID", "Modality",
]
#: SOP classes GDCM groups into a series but that are not images medseg reads
#: (an RT Dose grid would come back as raw dose units in a 1-channel 4D array).
NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.481.2": "RT Dose"}
#: GDCM (through SimpleITK) raises RuntimeError for a series it cannot decode;
#: :func:`medseg.io.read_volume` turns it into an ImageReadError naming the folder.
#: pydicom errors on a single file are turned into one naming that file (:func:`_tags`).
READ_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,)


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a folder: UID, description and its files (GDCM's order)."""

    uid: str
    description: str
    files: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.uid or '<empty UID>'} {self.description!r} ({len(self.files)} slices)"


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM image series in ``folder`` (not recursive).

    Raises
    ------
    ImageReadError
        the folder holds no readable DICOM image files.
    """
    folder = os.fspath(folder)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "No Series were found"
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not uids:
        raise ImageReadError(f"no DICOM image files found in this folder{_contents(folder)}",
                             folder)
    series = []
    for uid in uids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        first = _tags(files[0])
        series.append(SeriesInfo(uid, str(first.get("SeriesDescription", "")), files))
    return series


def read_dicom_series(folder: str | os.PathLike, series: str | None = None) -> Volume:
    """Read the DICOM series in ``folder`` as a 3D Volume (RAS+, (x, y, z)).

    Parameters
    ----------
    folder : folder holding the series' files.
    series : SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Volume whose z axis follows the slice positions (increasing along the
    slice normal), with rescale slope/intercept applied (int16 for typical CT).
    ``meta`` holds ``dicom_files`` (paths in slice order, index k of the z
    axis), ``series_uid``, ``study_uid``, ``source`` and ``format``.

    Raises
    ------
    ImageReadError
        no DICOM image files; several series and no ``series``; unreadable
        headers; a series of non-image objects (:data:`NOT_IMAGES`).
    UsageError
        ``series`` not found.
    READ_ERRORS
        GDCM cannot decode the series (:func:`medseg.io.read_volume` names the folder).
    GeometryError
        missing slices, duplicated positions, uneven spacing, mixed orientations,
        a sheared stack, or no position tags.
    """
    found = list_series(folder)
    chosen = _choose(folder, found, series)
    headers = [_tags(f) for f in chosen.files]
    _check_is_image(chosen.files[0], headers[0])
    try:
        files = _ordered_files(folder, chosen.files, headers)
    except GeometryError as exc:
        unread = _in_no_series(folder, found)
        if not unread:
            raise
        raise GeometryError(
            f"{exc.message}; {len(unread)} file(s) here are in no series (unreadable slices?): "
            f"{', '.join(unread[:3])}",
            folder,
        ) from exc
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    image = reader.Execute()
    meta = {
        "format": "dicom",
        "dicom_files": list(files),
        "series_uid": chosen.uid,
        "study_uid": str(headers[0].get("StudyInstanceUID", "")),
    }
    volume = sitk_to_volume(image, folder, meta)
    log.debug("read %d DICOM slices from %s", len(files), folder)
    return volume


def _choose(folder: str | os.PathLike, series: list[SeriesInfo], uid: str | None) -> SeriesInfo:
    listing = "; ".join(str(s) for s in series)
    if uid is not None:
        for info in series:
            if info.uid == uid:
                return info
        raise UsageError(f"no DICOM series with SeriesInstanceUID {uid!r}; found: {listing}",
                         folder)
    if len(series) > 1:
        raise ImageReadError(
            f"holds {len(series)} DICOM series, pick one with series=<SeriesInstanceUID> "
            f"(medseg --series UID): {listing}",
            folder,
        )
    return series[0]


def _in_no_series(folder: str | os.PathLike, found: list[SeriesInfo]) -> list[str]:
    """Names of the files in ``folder`` that GDCM put in no series (sorted)."""
    listed = {Path(f).name for info in found for f in info.files}
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name not in listed)


def _check_is_image(path: str, header: pydicom.Dataset) -> None:
    """Refuse a series of objects that are not images (:data:`NOT_IMAGES`), naming the file."""
    sop_class = _sop_class(header)
    if sop_class in NOT_IMAGES:
        raise ImageReadError(
            f"is an {NOT_IMAGES[sop_class]} object (Modality {header.get('Modality', '?')}, "
            f"SOPClassUID {sop_class}), not an image series medseg reads",
            path,
        )


def _contents(folder: str, shown: int = 3) -> str:
    """What a folder without image series holds, for the error message: ' (a.dcm: RTDOSE; ...)'."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    notes = [f"{path.name}: {_what_is(path)}" for path in files[:shown]]
    more = f"; {len(files) - shown} more files" if len(files) > shown else ""
    return f" ({'; '.join(notes)}{more})" if notes else ""


def _what_is(path: Path) -> str:
    """'not DICOM', or the SOP class and modality of a DICOM object GDCM found no image in."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, ValueError):
        return "not DICOM"
    sop = _sop_class(header)
    if not sop:
        return "not a readable DICOM object (no SOPClassUID)"
    return f"{sop.name or sop} ({header.get('Modality', 'no Modality')}), not an image GDCM reads"


def _sop_class(header: pydicom.Dataset) -> UID:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID where the former is empty."""
    meta = getattr(header, "file_meta", None) or {}
    return UID(str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")))


def _tags(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read DICOM header ({exc})", path) from exc


def _ordered_files(
    folder: str | os.PathLike, files: tuple[str, ...], headers: list[pydicom.Dataset]
) -> list[str]:
    """``files`` sorted by position along the slice normal, after the geometry checks."""
    if len(files) == 1:
        return list(files)
    orientation, positions = _geometry(folder, files, headers)
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    _check_gaps(folder, along)
    _check_not_sheared(folder, positions, normal)
    return [files[i] for i in order]


def _geometry(folder, files, headers) -> tuple[np.ndarray, np.ndarray]:
    try:
        orientation = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError) as exc:
        raise GeometryError(
            "slices lack ImagePositionPatient / ImageOrientationPatient (or hold malformed "
            "values), cannot place them",
            folder,
        ) from exc
    if orientation.shape[1] != 6 or positions.shape[1] != 3:
        raise GeometryError("malformed ImagePositionPatient / ImageOrientationPatient", folder)
    bad = np.flatnonzero(np.abs(orientation - orientation[0]).max(axis=1) > 1e-4)
    if bad.size:
        raise GeometryError(
            f"slices have different ImageOrientationPatient (e.g. {Path(files[bad[0]]).name}); "
            "the folder mixes stacks",
            folder,
        )
    return orientation, positions


def _check_gaps(folder: str | os.PathLike, along: np.ndarray) -> None:
    """Raise if the sorted slice positions ``along`` (mm) are not evenly spaced."""
    gaps = np.diff(along)
    median = float(np.median(gaps))
    if median <= SPACING_ATOL_MM or np.min(gaps) <= SPACING_ATOL_MM:
        raise GeometryError(
            f"slices share a position (duplicated slices or several stacks; positions "
            f"{_fmt(along)} mm along the normal)",
            folder,
        )
    off = np.flatnonzero(np.abs(gaps - median) > SPACING_RTOL * median + SPACING_ATOL_MM)
    if off.size:
        k = int(off[0])
        missing = round(gaps[k] / median) - 1
        hint = f" ({missing} slice(s) missing?)" if missing >= 1 else ""
        raise GeometryError(
            f"uneven slice spacing: gap of {gaps[k]:.4g} mm between slice positions "
            f"{along[k]:.4g} and {along[k + 1]:.4g} mm, median gap {median:.4g} mm{hint}; "
            f"{off.size} of {gaps.size} gaps differ",
            folder,
        )


def _check_not_sheared(
    folder: str | os.PathLike, positions: np.ndarray, normal: np.ndarray
) -> None:
    steps = np.diff(positions, axis=0)
    in_plane = steps - np.outer(steps @ normal, normal)
    worst = float(np.sqrt((in_plane**2).sum(axis=1)).max())
    if worst > SPACING_ATOL_MM * 10:
        raise GeometryError(
            f"slice positions drift {worst:.3g} mm within the slice plane (gantry tilt or "
            "sheared stack); not supported",
            folder,
        )


def _fmt(values: np.ndarray, n: int = 6) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}]"
