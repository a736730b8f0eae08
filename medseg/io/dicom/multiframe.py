"""Enhanced multi-frame DICOM images (one file, many frames) and pixel decoding.

An enhanced CT/MR/PET object (and its legacy-converted form) keeps each
frame's geometry in functional groups: ImagePositionPatient in the per-frame
PlanePositionSequence, ImageOrientationPatient in PlaneOrientationSequence,
PixelSpacing in PixelMeasuresSequence and the rescale in
PixelValueTransformationSequence, each per frame or shared by all frames.
:func:`read_multiframe` places the frames by those tags (through
:func:`medseg.io.dicom.stack.plan_stack`, so gantry tilt, missing and duplicated
frames are handled as for a series of files) and returns an (x, y, z) Volume.

Pixels are decoded by pydicom. Compressed transfer syntaxes need a decoder
plugin (:data:`CODEC_PACKAGES`; ``pip install 'medseg[dicom]'`` installs them
all); without one the error names the codec and the package that adds it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.uid import UID

from medseg.errors import GeometryError, ImageReadError
from medseg.io.dicom.files import read_dataset
from medseg.io.dicom.stack import plan_stack, untilt
from medseg.io.dicom.stacks import Member, image_type
from medseg.volume import Volume

__all__ = [
    "CODEC_PACKAGES", "read_multiframe", "read_slices", "codec_hint", "narrow_integers",
    "frame_members", "pixels_of", "rescaled",
]

log = logging.getLogger(__name__)

_JPEG = "pylibjpeg pylibjpeg-libjpeg"
_J2K = "pylibjpeg pylibjpeg-openjpeg"
#: Packages that add a pydicom decoder for each compressed transfer syntax.
CODEC_PACKAGES = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _J2K,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": _J2K,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": _J2K,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": _J2K,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": _J2K,  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE Lossless (numpy suffices)
}
_DECODE_ERRORS = (RuntimeError, ValueError, NotImplementedError, TypeError)


def codec_hint(transfer_syntax: str) -> str:
    """'JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80): pip install pyjpegls'."""
    uid = UID(str(transfer_syntax))
    package = CODEC_PACKAGES.get(str(uid))
    install = f"pip install {package}" if package else "no decoder medseg knows of"
    return f"{uid.name or 'unknown transfer syntax'} ({uid}): {install} " \
           "(or pip install 'medseg[dicom]')"


def read_multiframe(
    path: str | os.PathLike,
    *,
    tilt: bool = True,
    frames: Sequence[int] | None = None,
    source: str | os.PathLike | None = None,
) -> Volume:
    """Read an enhanced multi-frame DICOM image (or one stack of it) as an (x, y, z) Volume.

    Parameters
    ----------
    path : the multi-frame file.
    tilt : resample a gantry-tilted stack (True, with a warning) or refuse it.
    frames : 0-based indices of the frames to read (one stack,
        :attr:`medseg.io.dicom.stacks.StackInfo.frames`); None reads all frames.
    source : what errors name (default ``path``).

    Returns
    -------
    Volume with z ordered along the slice normal, rescale applied per frame
    (integers kept as integers, int16 when they fit; float64 otherwise).
    ``meta`` holds ``dicom_files`` (``[path]``), ``dicom_frames`` (the 1-based
    frame number of each z index), ``series_uid``, ``study_uid`` and ``format``.

    Raises
    ------
    ImageReadError
        unreadable file, colour frames, or compressed pixel data without a decoder
        (names the codec and the package that adds it).
    GeometryError
        frames without position or orientation, or as :func:`plan_stack`.
    """
    source = path if source is None else source
    ds = read_dataset(path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(f"has {ds.SamplesPerPixel} samples per pixel (colour); medseg reads "
                             "greyscale volumes", path)
    chosen = np.arange(n) if frames is None else np.asarray(frames, dtype=int)
    orientations = np.array([_frame_tag(ds, path, i, "PlaneOrientationSequence",
                                        "ImageOrientationPatient") for i in chosen], float)
    positions = np.array([_frame_tag(ds, path, i, "PlanePositionSequence",
                                     "ImagePositionPatient") for i in chosen], float)
    spacing = _frame_tag(ds, path, int(chosen[0]), "PixelMeasuresSequence", "PixelSpacing")
    stack = plan_stack(source, orientations, positions, (float(spacing[0]), float(spacing[1])),
                       tilt=tilt, single_step_mm=_single_step(ds))
    pixels = pixels_of(ds, path).reshape(n, int(ds.Rows), int(ds.Columns))[chosen]
    values = rescaled(ds, pixels, chosen)
    array = untilt(values[stack.order].transpose(2, 1, 0), stack)  # (z, y, x) -> (x, y, z)
    meta = {
        "source": os.fspath(source), "format": "dicom", "dicom_files": [os.fspath(path)],
        "dicom_frames": [int(chosen[i]) + 1 for i in stack.order],
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
    }
    log.debug("read %d of %d frames from %s", len(chosen), n, path)
    return Volume(np.ascontiguousarray(array), stack.affine, meta)


def frame_members(ds: pydicom.Dataset, path: str | os.PathLike) -> list[Member]:
    """Every frame of a multi-frame object as a stack :class:`~medseg.io.dicom.stacks.Member`.

    Attributes per frame (functional groups, per frame or shared): FrameType and
    ComplexImageComponent of the frame-type group, the rank of a positive
    EffectiveEchoTime, DiffusionBValue, TemporalPositionIndex, FrameAcquisitionNumber, and the
    DimensionIndexValues other than in-stack position and plane position. A frame
    without position or orientation gets none (reading it names the problem).
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    pointers = [int(item.get("DimensionIndexPointer", 0) or 0)
                for item in ds.get("DimensionIndexSequence", [])]
    keep = [k for k, p in enumerate(pointers) if p not in _SPATIAL_DIMENSIONS]
    echo_times = [_frame_value(ds, i, "MREchoSequence", "EffectiveEchoTime") for i in range(n)]
    ranks = {t: r for r, t in enumerate(sorted({float(t) for t in echo_times
                                                if t is not None and float(t) > 0}), start=1)}
    members = []
    for i in range(n):
        kind = _frame_type(ds, i)
        dims = _frame_value(ds, i, "FrameContentSequence", "DimensionIndexValues")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        attributes = {
            "series": _int(ds.get("SeriesNumber")),
            "type": image_type(kind[0]) or None,
            "component": kind[1],
            "echo": ranks.get(float(echo_times[i])) if echo_times[i] is not None else None,
            "bvalue": _int(_frame_value(ds, i, "MRDiffusionSequence", "DiffusionBValue")),
            "temporal": _int(_frame_value(ds, i, "FrameContentSequence",
                                          "TemporalPositionIndex")),
            "dimension": tuple(int(dims[k]) for k in keep if k < len(dims)) or None,
            "acquisition": _int(_frame_value(ds, i, "FrameContentSequence",
                                             "FrameAcquisitionNumber")),
        }
        position, normal = _plane(ds, i)
        members.append(Member(os.fspath(path), i, position, normal, attributes, os.fspath(path)))
    return members


#: Dimension index pointers that place a frame within its stack (not a stack of their own).
_SPATIAL_DIMENSIONS = {
    0x00209057,  # InStackPositionNumber
    0x00200032,  # ImagePositionPatient
    0x00201041,  # SliceLocation
}
_FRAME_TYPE_GROUPS = ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence",
                      "PETFrameTypeSequence", "FrameTypeSequence")


def _frame_type(ds: pydicom.Dataset, index: int) -> tuple:
    """(FrameType, ComplexImageComponent) of a frame; the object's ImageType when it has none."""
    for group in _FRAME_TYPE_GROUPS:
        kind = _frame_value(ds, index, group, "FrameType")
        if kind is not None:
            component = _frame_value(ds, index, group, "ComplexImageComponent")
            return kind, (str(component).upper() if component else None)
    return ds.get("ImageType"), None


def _plane(ds: pydicom.Dataset, index: int) -> tuple:
    position = _frame_value(ds, index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _frame_value(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient")
    try:
        iop = np.array([float(v) for v in orientation])
        normal = np.cross(iop[:3], iop[3:])
        return tuple(float(v) for v in position), tuple(float(v) for v in normal)
    except (TypeError, ValueError, IndexError):
        return None, None


def _frame_value(ds: pydicom.Dataset, index: int, group: str, keyword: str):
    try:
        return _frame_tag(ds, "", index, group, keyword)
    except GeometryError:
        return None


def _int(value) -> int | None:
    try:
        return None if value in (None, "") else int(float(value))
    except (TypeError, ValueError):
        return None


def read_slices(files: list[str]) -> np.ndarray:
    """Decode single-frame slices with pydicom: rescaled (z, y, x) array, slices in ``files`` order.

    The fallback for slices GDCM cannot decode (e.g. HTJ2K); errors as
    :func:`read_multiframe` (a missing decoder names the codec and its package).
    """
    slices = []
    for path in files:
        ds = read_dataset(path)
        pixels = pixels_of(ds, path).reshape(1, int(ds.Rows), int(ds.Columns))
        slices.append(rescaled(ds, pixels, range(1)))
    dtypes = {s.dtype for s in slices}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.result_type(*dtypes)
    return narrow_integers(np.concatenate([s.astype(dtype) for s in slices]))


def narrow_integers(array: np.ndarray) -> np.ndarray:
    """An integer array wider than 16 bits as int16 when its values fit (CT in HU), else as is."""
    if array.dtype.kind not in "iu" or array.dtype.itemsize <= 2 or array.size == 0:
        return array
    info = np.iinfo(np.int16)
    if info.min <= int(array.min()) and int(array.max()) <= info.max:
        return array.astype(np.int16)
    return array


def _frame_tag(ds: pydicom.Dataset, path, index: int, group: str, keyword: str):
    """``keyword`` of frame ``index``: per-frame group, else shared group, else top level."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        sequence = ds.get(groups)
        if not sequence:
            continue
        item = sequence[index] if groups.startswith("PerFrame") else sequence[0]
        inner = item.get(group)
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    if keyword in ds:
        return ds.get(keyword)
    raise GeometryError(f"frame {index + 1} has no {keyword} (functional group {group}); cannot "
                        "place it", path)


def _single_step(ds: pydicom.Dataset) -> float:
    """Slice spacing (mm) of a one-frame object: SpacingBetweenSlices or SliceThickness, else 1."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = _frame_tag(ds, "", 0, "PixelMeasuresSequence", keyword)
        except GeometryError:
            continue
        if value and float(value) > 0:
            return float(value)
    return 1.0


def pixels_of(ds: pydicom.Dataset, path) -> np.ndarray:
    """The stored pixel values of ``ds`` (pydicom's decoders); errors name the codec's package.

    Raises
    ------
    ImageReadError
        no decoder installed for the transfer syntax, or decoding fails.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageReadError(f"pixel data need a decoder that is not installed: "
                                 f"{codec_hint(syntax)}", path)
    try:
        return ds.pixel_array
    except _DECODE_ERRORS as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ImageReadError(f"cannot decode pixel data ({codec_hint(syntax)}): {reason}",
                             path) from exc


def rescaled(ds: pydicom.Dataset, frames: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Stored values -> rescaled values, per frame; integer maths while slopes are integers.

    ``frames`` (n, rows, columns) are the frames ``indices`` (0-based) of ``ds``; one
    index for n > 1 applies that frame's rescale to all (a mosaic's tiles).
    """
    n = frames.shape[0]
    indices = list(indices) * (n if len(indices) == 1 else 1)
    slopes = np.array([_rescale(ds, int(i), "RescaleSlope", 1.0) for i in indices])
    intercepts = np.array([_rescale(ds, int(i), "RescaleIntercept", 0.0) for i in indices])
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return frames
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        values = frames.astype(np.int64) * slopes.astype(np.int64)[:, None, None]
        values += intercepts.astype(np.int64)[:, None, None]
        return narrow_integers(values.astype(np.int32) if _fits_int32(values) else values)
    return frames * slopes[:, None, None] + intercepts[:, None, None]


def _rescale(ds: pydicom.Dataset, index: int, keyword: str, default: float) -> float:
    try:
        value = _frame_tag(ds, "", index, "PixelValueTransformationSequence", keyword)
    except GeometryError:
        return default
    return default if value in (None, "") else float(value)


def _fits_int32(values: np.ndarray) -> bool:
    info = np.iinfo(np.int32)
    return info.min <= int(values.min()) and int(values.max()) <= info.max
