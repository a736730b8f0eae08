"""DICOM images as users have them: a series folder, one file of a series, a multi-frame object.

:func:`read_dicom_image` takes

* a folder: its image series (:func:`read_dicom_image`);
* one single-frame file (a ``.dcm`` or any file with the DICM preamble): its
  own stack of the series it belongs to (the other files of its folder with its
  SeriesInstanceUID);
* one enhanced multi-frame file, or one Siemens mosaic: that object
  (:func:`medseg.io.dicom.multiframe.read_multiframe`,
  :func:`medseg.io.dicom.mosaic.read_mosaic`).

A series or object may hold several image stacks (magnitude and phase, echoes,
Dixon images, time points; :mod:`medseg.io.dicom.stacks`): ``stack=`` picks one
by number or name, an input with several and none picked is refused in one line
that lists them, and :func:`list_stacks` / :func:`read_dicom_stacks` give them all.

medseg reads the headers itself (pydicom, pixels skipped, :mod:`medseg.io.dicom.files`):
non-image objects (RTSTRUCT, RT Dose, RT Plan, SR, DICOM-SEG, presentation
states, ...) are skipped with a note in the log, or refused in one line when a
folder holds nothing else; localizers and slices of another orientation or size
are left out with a note. Slices are ordered and checked by their
ImagePositionPatient (:mod:`medseg.io.dicom.stack`): a missing slice, duplicated
positions or uneven spacing is an error, and a gantry-tilted stack is resampled
onto an orthogonal grid with a warning (or refused with ``tilt=False``).

GDCM (inside SimpleITK) decodes the pixels of a series, compressed transfer
syntaxes included (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE),
and applies RescaleSlope/RescaleIntercept; slices it cannot decode are decoded
by pydicom's plugins instead. Integer images wider than 16 bits become int16
when their values fit (CT in HU).
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.io.dicom.files import (
    Scan,
    SeriesInfo,
    drop_localizers,
    group_series,
    is_multiframe,
    non_image_kind,
    read_dataset,
    read_header,
    refuse_non_images,
    scan_folder,
    sop_class,
    stored_pixel_problem,
)
from medseg.io.dicom.mosaic import csa_b_value, is_mosaic, read_mosaic
from medseg.io.dicom.multiframe import frame_members, narrow_integers, read_multiframe, read_slices
from medseg.io.dicom.stack import SPACING_ATOL_MM, SPACING_RTOL, Stack, plan_stack, untilt
from medseg.io.formats import error_reason
from medseg.io.dicom.stacks import (
    Member,
    StackInfo,
    choose_stack,
    group_stacks,
    own_stack,
    slice_attributes,
)
from medseg.io.sitk import sitk_to_volume
from medseg.volume import Volume

__all__ = [
    "read_dicom_image", "read_dicom_stacks", "list_series", "list_stacks",
    "SeriesInfo", "StackInfo", "SPACING_RTOL", "SPACING_ATOL_MM", "READ_ERRORS",
]

log = logging.getLogger(__name__)

#: GDCM (through SimpleITK) raises RuntimeError for a series it cannot read;
#: :func:`medseg.io.read_volume` turns it into an ImageReadError naming the path.
#: What a malformed file makes the reading raise besides medseg's own errors: pydicom's
#: parse and decode errors, and header values that are not what their VR promises (a
#: PixelSpacing of "0.9765O25", a truncated element), met wherever a value is used. They
#: become one ImageReadError naming the file (:func:`medseg.io.read_volume`).
READ_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError, EOFError,
    NotImplementedError, struct.error,
)

#: What ``stack=`` takes: a 1-based number, a name ("phase", "echo2"), or None.
StackChoice = int | str | None


@dataclass
class _Found:
    """The stacks an input holds and what reading one of them needs."""

    source: str | os.PathLike  # what the user gave: named in errors
    stacks: list[StackInfo]
    own: int | None = None  # the stack of a single file the user gave
    headers: dict[str, pydicom.Dataset] = field(default_factory=dict)  # single-frame slices
    scan: Scan | None = None
    uid: str = ""
    study_uid: str = ""


def read_dicom_image(
    path: str | os.PathLike,
    series: str | None = None,
    *,
    stack: StackChoice = None,
    tilt: bool = True,
) -> Volume:
    """Read a DICOM series folder, the stack of one file, or a multi-frame object.

    Parameters
    ----------
    path : a folder, or one DICOM file (see the module notes).
    series : SeriesInstanceUID to read when a folder holds several series; with a
        file it must be the file's own.
    stack : the stack to read when the input holds several (1-based number or a
        name, :func:`medseg.io.dicom.stacks.choose_stack`); a single-frame file
        reads its own stack unless another is named.
    tilt : resample a gantry-tilted stack onto an orthogonal grid with a warning
        (True) or refuse it with a GeometryError (False).

    Returns
    -------
    Volume (x, y, z), RAS+ mm affine, whose z axis follows the slice positions (increasing
    along the slice normal), with rescale slope/intercept applied (int16 for typical CT).
    ``meta`` holds ``dicom_files`` (paths in slice order, index k of the z axis),
    ``series_uid``, ``study_uid``, ``source``, ``format``, ``stack`` (its label, "" when it
    is the only one), ``stack_index`` and ``stack_names`` (the names ``stack=`` takes).

    Raises
    ------
    ImageReadError
        no DICOM image files (or only non-image objects: names them); several series and
        no ``series``; several stacks and no ``stack`` (lists them); pixel data no
        installed decoder handles; a malformed header (:data:`READ_ERRORS`, through
        :func:`medseg.io.read_volume`).
    UsageError
        ``series`` is not the file's series, or not in the folder; ``stack`` out
        of range or unknown (lists the stacks).
    GeometryError
        missing slices, duplicated positions, uneven spacing, an irregular in-plane
        drift, a tilt with ``tilt=False``, or no position tags.
    """
    found = _find(path, series)
    return _read(found, choose_stack(path, found.stacks, stack, found.own), tilt)


def list_stacks(path: str | os.PathLike, series: str | None = None) -> list[StackInfo]:
    """The image stacks of a DICOM input (headers only), numbered from 1.

    Raises
    ------
    As :func:`read_dicom_image` (but not for several stacks); a malformed header
    (:data:`READ_ERRORS`) as one ImageReadError naming ``path``.
    """
    try:
        return _find(path, series).stacks
    except READ_ERRORS as exc:
        raise ImageReadError(f"cannot read the DICOM headers ({error_reason(exc)})",
                             path) from exc


def read_dicom_stacks(
    path: str | os.PathLike, series: str | None = None, *, tilt: bool = True
) -> list[tuple[StackInfo, Volume]]:
    """Every stack of a DICOM input with its Volume (as :func:`read_dicom_image` reads each)."""
    found = _find(path, series)
    return [(info, _read(found, info, tilt)) for info in found.stacks]


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The DICOM image series in ``folder`` (not recursive).

    Raises
    ------
    ImageReadError
        the folder holds no DICOM image files (the message says what it holds).
    """
    return _series_of(folder, scan_folder(folder))


# -- finding the stacks -------------------------------------------------------------------------
def _find(path: str | os.PathLike, series: str | None) -> _Found:
    if Path(path).is_dir():
        return _find_in_folder(path, path, series)
    header = read_header(path)
    kind = non_image_kind(header)
    if kind is not None:
        refuse_non_images(path, [(Path(path).name, kind, str(sop_class(header)))])
    uid = str(header.get("SeriesInstanceUID", ""))
    if series is not None and series != uid:
        raise UsageError(f"series={series!r} but this file belongs to series {uid!r}; give "
                         "its folder to choose another series", path)
    if is_multiframe(header):
        members = frame_members(read_dataset(path, pixels=False), path)
        return _Found(path, group_stacks(members), uid=uid)
    if is_mosaic(header):
        return _Found(path, group_stacks([_mosaic_member(path)]), uid=uid)
    found = _find_in_folder(Path(path).parent, path, uid)
    found.own = own_stack(found.stacks, path)
    return found


def _find_in_folder(folder: str | os.PathLike, source, uid: str | None) -> _Found:
    scan = scan_folder(folder)
    chosen = _choose(folder, _series_of(folder, scan), uid)
    if scan.non_images:
        log.info("%s: skipped %d non-image object(s): %s", folder, len(scan.non_images),
                 ", ".join(f"{name} ({kind})" for name, kind, _ in scan.non_images[:5]))
    headers = [h for h in scan.images if h.filename in chosen.files]
    members: list[Member] = []
    slices = []
    for header in headers:
        path = str(header.filename)
        if is_multiframe(header):
            members.extend(frame_members(read_dataset(path, pixels=False), path))
        elif is_mosaic(header):
            members.append(_mosaic_member(path))
        else:
            slices.append(header)
    if slices:
        slices = drop_localizers(folder, slices)
        members.extend(_slice_member(h) for h in slices)
    return _Found(source, group_stacks(members), None, {str(h.filename): h for h in slices},
                  scan, chosen.uid, str(headers[0].get("StudyInstanceUID", "")))


def _mosaic_member(path: str | os.PathLike) -> Member:
    """A Siemens mosaic as one member (a whole volume), its b-value from the CSA header."""
    header = read_dataset(path, pixels=False)
    return Member(os.fspath(path), None, None, None,
                  slice_attributes(header, csa_b_value(header)), os.fspath(path))


def _slice_member(header: pydicom.Dataset) -> Member:
    try:
        iop = np.array([float(v) for v in header.ImageOrientationPatient])
        position = tuple(float(v) for v in header.ImagePositionPatient)
        normal = tuple(float(v) for v in np.cross(iop[:3], iop[3:]))
    except (AttributeError, TypeError, ValueError, IndexError):
        position, normal = None, None  # reading names the missing tags
    return Member(str(header.filename), None, position, normal, slice_attributes(header))


# -- reading one stack --------------------------------------------------------------------------
def _read(found: _Found, info: StackInfo, tilt: bool) -> Volume:
    first = info.members[0]
    source = found.source if not Path(found.source).is_dir() else first.unit or found.source
    if info.frames is not None:
        volume = read_multiframe(first.file, tilt=tilt, frames=info.frames, source=source)
    elif first.unit is not None:
        volume = read_mosaic(first.file, source)
    else:
        volume = _read_slices(found, info, source, tilt)
    meta = {**volume.meta, "stack": info.label, "stack_index": info.index,
            "stack_names": info.names}
    if len(found.stacks) > 1:
        log.debug("%s: read stack %s of %d", found.source, info, len(found.stacks))
    return Volume(volume.array, volume.affine, meta)


def _read_slices(found: _Found, info: StackInfo, source, tilt: bool) -> Volume:
    headers = [found.headers[f] for f in info.files]
    stack = _plan(source, headers, found.scan, tilt)
    files = [str(headers[i].filename) for i in stack.order]
    for file in files:  # ITK (GDCM) would read a slice cut short without a word
        problem = stored_pixel_problem(file)
        if problem is not None:
            raise ImageReadError(f"{Path(file).name}: {problem}", source)
    meta = {"format": "dicom", "dicom_files": files, "series_uid": found.uid,
            "study_uid": found.study_uid}
    volume = _volume(source, files, stack, meta)
    log.debug("read %d DICOM slices for %s", len(files), source)
    return volume


def _series_of(folder: str | os.PathLike, scan: Scan) -> list[SeriesInfo]:
    if scan.images:
        return group_series(scan.images)
    if scan.non_images:
        refuse_non_images(folder, scan.non_images)
    shown = "; ".join(f"{name}: not a readable DICOM image" for name in scan.unreadable[:3])
    more = f"; {len(scan.unreadable) - 3} more files" if len(scan.unreadable) > 3 else ""
    raise ImageReadError(f"no DICOM image files found in this folder"
                         f"{f' ({shown}{more})' if shown else ''}", folder)


def _choose(folder: str | os.PathLike, series: list[SeriesInfo], uid: str | None) -> SeriesInfo:
    listing = "; ".join(str(s) for s in series)
    if uid is not None:
        matches = [info for info in series if info.uid == uid]
        if len(matches) == 1:
            return matches[0]
        raise UsageError(f"no DICOM series with SeriesInstanceUID {uid!r}; found: {listing}",
                         folder)
    if len(series) > 1:
        raise ImageReadError(
            f"holds {len(series)} DICOM series, pick one with series=<SeriesInstanceUID> "
            f"(medseg --series UID): {listing}",
            folder,
        )
    return series[0]


def _plan(folder, headers: list[pydicom.Dataset], scan: Scan, tilt: bool) -> Stack:
    """:func:`plan_stack` of the slices; a geometry error also names unreadable files."""
    try:
        orientations, positions = _positions(folder, headers)
        spacing = _pixel_spacing(folder, headers)
        return plan_stack(folder, orientations, positions, (spacing[0], spacing[1]), tilt=tilt)
    except GeometryError as exc:
        if not scan.unreadable:
            raise
        raise GeometryError(
            f"{exc.message}; {len(scan.unreadable)} file(s) here are in no series (unreadable "
            f"slices?): {', '.join(scan.unreadable[:3])}",
            folder,
        ) from exc


def _pixel_spacing(folder, headers: list[pydicom.Dataset]) -> tuple[float, float]:
    """The slices' common PixelSpacing (mm, row then column); 1 mm where no slice has one.

    Raises
    ------
    GeometryError
        the slices disagree (a slice of another series or reconstruction got into this one:
        read as one grid, its pixels would sit in the wrong places).
    """
    values = [tuple(float(v) for v in h.get("PixelSpacing", [1.0, 1.0])) for h in headers]
    for header, value in zip(headers, values):
        if not np.allclose(value, values[0], rtol=1e-4, atol=1e-6):
            raise GeometryError(
                f"slices have different PixelSpacing: {list(values[0])} mm in "
                f"{Path(str(headers[0].filename)).name}, {list(value)} mm in "
                f"{Path(str(header.filename)).name}; one series is one grid", folder)
    return values[0][0], values[0][1]


def _positions(folder, headers: list[pydicom.Dataset]) -> tuple[np.ndarray, np.ndarray]:
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
    return orientation, positions


def _volume(folder, files: list[str], stack: Stack, meta: dict) -> Volume:
    """Decode the ordered slices; ITK's grid for a straight stack, the untilted one otherwise."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints about non-uniform sampling
    try:
        volume = sitk_to_volume(reader.Execute(), folder, meta)
    except RuntimeError as exc:
        if not read_dataset(files[0], pixels=False).file_meta.get(
                "TransferSyntaxUID", pydicom.uid.ExplicitVRLittleEndian).is_compressed:
            raise
        log.info("%s: GDCM cannot decode the slices (%s); decoding with pydicom", folder, exc)
        array = read_slices(files).transpose(2, 1, 0)
        volume = Volume(array, stack.affine, {"source": os.fspath(folder), **meta})
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if stack.tilted:
        volume = Volume(untilt(volume.array, stack), stack.affine, volume.meta)
    return volume.with_array(narrow_integers(volume.array))
