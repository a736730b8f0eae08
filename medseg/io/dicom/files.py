"""The DICOM files of a folder: headers, what each object is, series, localizers.

Every DICOM file medseg opens goes through :func:`read_dataset`, the one
``pydicom.dcmread`` wrapper: a file pydicom cannot parse becomes an
ImageReadError naming it, in one line. Everything else here reads headers only
(pixels skipped):

* :func:`read_header`: the tags medseg needs of one file, or an ImageReadError naming it;
* :func:`non_image_kind`: "DICOM-SEG", "RT Dose", ... for objects that are not images
  (by SOP class, then Modality), None for images;
* :func:`scan_folder`: every file of a folder sorted into image objects, non-image
  objects and files that are not readable DICOM;
* :func:`group_series`: image objects by SeriesInstanceUID (single-frame files,
  multi-frame objects and mosaics alike; the stacks of a series are
  :mod:`medseg.io.dicom.stacks`' concern);
* :func:`drop_localizers`: the slices of one series that belong to its main stack
  (localizers/scouts and other geometries are left out with a note in the log);
* :func:`refuse_non_images`: the one-line error for a folder (or file) holding no images;
* :func:`pixel_data_problem`: native Pixel Data whose length does not fit its header.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medseg.errors import GeometryError, ImageReadError

__all__ = [
    "HEADER_TAGS", "NON_IMAGE_CLASSES", "Scan", "SeriesInfo", "read_dataset", "read_header",
    "sop_class",
    "non_image_kind", "is_multiframe", "scan_folder", "group_series", "drop_localizers",
    "refuse_non_images", "image_type_values", "pixel_data_problem", "stored_pixel_problem",
]

log = logging.getLogger(__name__)

HEADER_TAGS = [
    "ImagePositionPatient", "ImageOrientationPatient", "SeriesInstanceUID", "StudyInstanceUID",
    "SeriesDescription", "SOPClassUID", "Modality", "ImageType", "PixelSpacing", "Rows",
    "Columns", "NumberOfFrames", "SeriesNumber", "EchoNumbers", "AcquisitionNumber",
    "TemporalPositionIdentifier", "InstanceNumber", "DiffusionBValue",
]
#: SOP classes of objects that are not images medseg reads as volumes.
NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM-SEG",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image (a projection)",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report (SR)",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.481.": "RT treatment object",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
}
_NON_IMAGE_MODALITIES = {
    "SEG": "DICOM-SEG", "RTSTRUCT": "RTSTRUCT", "RTDOSE": "RT Dose", "RTPLAN": "RT Plan",
    "RTRECORD": "RT Record", "SR": "Structured Report (SR)", "PR": "Presentation State",
    "KO": "Key Object Selection", "REG": "Registration", "DOC": "Document",
}
#: Objects that are labels: the refusal says how to read them.
_LABEL_KINDS = ("DICOM-SEG", "RTSTRUCT")


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a folder: UID, description and its files (header order).

    ``objects`` counts the files that are multi-frame objects.
    """

    uid: str
    description: str
    files: tuple[str, ...]
    objects: int = 0

    @property
    def multiframe(self) -> bool:
        """True when the series is one multi-frame object."""
        return self.objects == 1 and len(self.files) == 1

    def __str__(self) -> str:
        slices = len(self.files) - self.objects
        parts = [f"{slices} slices"] if slices else []
        if self.objects:
            parts.append("multi-frame object" if self.objects == 1 else
                         f"{self.objects} multi-frame objects")
        return f"{self.uid or '<empty UID>'} {self.description!r} ({', '.join(parts)})"


@dataclass
class Scan:
    """The files of a folder: image headers, non-image objects and unreadable names."""

    images: list[pydicom.Dataset] = field(default_factory=list)
    non_images: list[tuple[str, str, str]] = field(default_factory=list)  # (name, kind, UID)
    unreadable: list[str] = field(default_factory=list)


#: What pydicom raises for a file it cannot parse (not DICOM, truncated, a malformed element).
#: pydicom's parse errors, and what a malformed element makes it raise (an unknown VR:
#: NotImplementedError; a truncated value: struct.error, KeyError, IndexError).
_PARSE_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, NotImplementedError,
                 struct.error, KeyError, IndexError)


def read_dataset(
    path: str | os.PathLike,
    what: str = "DICOM file",
    *,
    pixels: bool = True,
    tags: Sequence[str] | None = None,
    force: bool = False,
) -> pydicom.Dataset:
    """One DICOM file as a pydicom dataset; the one ``pydicom.dcmread`` of medseg.

    Parameters
    ----------
    path : the file.
    what : what the file should be, for the message ("DICOM header", "DICOM-SEG", ...).
    pixels : read the pixel data too (False stops before it).
    tags : read only these keywords (None: all).
    force : read a file without the DICM preamble and file meta (an old-style raw dataset).

    Raises
    ------
    ImageReadError
        pydicom cannot parse the file: "<path>: cannot read <what> (<pydicom's reason>)".
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels, specific_tags=tags,
                               force=force)
    except _PARSE_ERRORS as exc:
        raise ImageReadError(f"cannot read {what} ({exc})", path) from exc


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
    """The :data:`HEADER_TAGS` of one file, pixels skipped.

    A ``.dcm`` file without the preamble and file meta (an old-style raw
    dataset) is read all the same.

    Raises
    ------
    ImageReadError
        not a DICOM file pydicom can parse (names the file).
    """
    force = Path(path).suffix.lower() == ".dcm"
    header = read_dataset(path, "DICOM header", pixels=False, tags=HEADER_TAGS, force=force)
    if force and not (sop_class(header) or "SeriesInstanceUID" in header):
        raise ImageReadError("cannot read DICOM header (no preamble, no SOPClassUID)", path)
    return header


def sop_class(header: pydicom.Dataset) -> UID:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID where the former is empty."""
    meta = getattr(header, "file_meta", None) or {}
    return UID(str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")))


def non_image_kind(header: pydicom.Dataset) -> str | None:
    """What a non-image object is ("DICOM-SEG", "RT Dose", ...), None for an image."""
    uid = str(sop_class(header))
    if uid in NON_IMAGE_CLASSES:
        return NON_IMAGE_CLASSES[uid]
    for prefix, kind in _NON_IMAGE_PREFIXES.items():
        if uid.startswith(prefix):
            return kind
    return _NON_IMAGE_MODALITIES.get(str(header.get("Modality", "")).upper())


def pixel_data_problem(dataset: pydicom.Dataset, transfer_syntax: str | None = None
                       ) -> str | None:
    """Why the native (uncompressed) Pixel Data of ``dataset`` cannot be the image its header
    describes, or None. ``transfer_syntax``: the dataset's (default: its file meta's; a
    dataset received over the network has none).

    Its length must be what pydicom's ``get_expected_length`` computes from Rows, Columns,
    SamplesPerPixel, BitsAllocated and NumberOfFrames (plus one padding byte when that is
    odd). ITK (GDCM) reads a truncated native slice without a word, filling what is missing,
    so a cut transfer would otherwise be segmented as air. Compressed data (its decoder
    checks it), and a dataset without Pixel Data, give None.
    """
    syntax = transfer_syntax or getattr(getattr(dataset, "file_meta", None),
                                        "TransferSyntaxUID", None)
    if "PixelData" not in dataset or (syntax is not None and UID(syntax).is_compressed):
        return None
    return _length_problem(dataset, len(dataset.PixelData or b""))


def stored_pixel_problem(path: str | os.PathLike) -> str | None:
    """:func:`pixel_data_problem` of a file on disk without loading its Pixel Data: the bytes
    the file really holds for it (the element's declared length, or less when the file ends
    first: a copy cut short keeps the declared length). None for compressed data, a file
    without Pixel Data, or one pydicom cannot parse (its reader names that)."""
    try:
        dataset = pydicom.dcmread(path, defer_size=256,
                                  force=Path(path).suffix.lower() == ".dcm")
    except _PARSE_ERRORS:
        return None
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in dataset or (syntax is not None and UID(syntax).is_compressed):
        return None
    raw = dataset.get_item("PixelData", keep_deferred=True)
    declared, start = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if declared is None or start is None or declared == 0xFFFFFFFF:
        return None  # already read, or encapsulated
    return _length_problem(dataset, min(declared, max(0, os.path.getsize(path) - start)))


def _length_problem(dataset: pydicom.Dataset, got: int) -> str | None:
    """Why ``got`` bytes of native Pixel Data cannot be the image ``dataset``'s header
    describes (pydicom's ``get_expected_length``, plus one padding byte when odd), or None."""
    from pydicom.pixels.utils import get_expected_length

    try:
        expected = int(get_expected_length(dataset, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return f"Pixel Data without a usable image header ({exc})"
    if got == expected or (got == expected + 1 and expected % 2):
        return None
    return (f"Pixel Data holds {got} bytes, its header (Rows {dataset.get('Rows')}, Columns "
            f"{dataset.get('Columns')}, BitsAllocated {dataset.get('BitsAllocated')}) "
            f"needs {expected}")


def is_multiframe(header: pydicom.Dataset) -> bool:
    """True for an image object holding several frames (enhanced CT/MR/PET, ...)."""
    return int(header.get("NumberOfFrames", 1) or 1) > 1


def scan_folder(folder: str | os.PathLike) -> Scan:
    """Sort the (non-hidden) files of ``folder`` into images, non-images and unreadable ones.

    An image header must hold SeriesInstanceUID, Rows and Columns; a file
    missing them (a truncated slice) or that is not DICOM counts as unreadable.
    """
    scan = Scan()
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            header = read_header(path)
        except ImageReadError:
            scan.unreadable.append(path.name)
            continue
        kind = non_image_kind(header)
        if kind is not None:
            scan.non_images.append((path.name, kind, str(sop_class(header))))
        elif all(tag in header for tag in ("SeriesInstanceUID", "Rows", "Columns")):
            header.filename = os.fspath(path)
            scan.images.append(header)
        else:
            scan.unreadable.append(path.name)
    return scan


def group_series(images: list[pydicom.Dataset]) -> list[SeriesInfo]:
    """Image headers by SeriesInstanceUID (first-seen order), multi-frame objects included."""
    groups: dict[str, list[pydicom.Dataset]] = {}
    for header in images:
        groups.setdefault(str(header.SeriesInstanceUID), []).append(header)
    return [_info(uid, headers) for uid, headers in groups.items()]


def _info(uid: str, headers: list[pydicom.Dataset]) -> SeriesInfo:
    files = tuple(str(h.filename) for h in headers)
    objects = sum(is_multiframe(h) for h in headers)
    return SeriesInfo(uid, str(headers[0].get("SeriesDescription", "")), files, objects)


def drop_localizers(
    folder: str | os.PathLike, headers: list[pydicom.Dataset]
) -> list[pydicom.Dataset]:
    """The slices of the series' main stack: localizers and other geometries left out.

    A slice is left out (noted in the log) when its ImageType says LOCALIZER,
    or when its orientation or matrix size differs from those of most slices.

    Raises
    ------
    GeometryError
        no slice remains, or two stacks of different geometry hold equally many slices.
    """
    kept = [h for h in headers if "LOCALIZER" not in image_type_values(h)]
    _note(folder, [h for h in headers if "LOCALIZER" in image_type_values(h)], "localizer/scout")
    if not kept:
        raise GeometryError("holds only localizer (scout) images, no volume", folder)
    counts = Counter(_stack_key(h) for h in kept)
    (main, n), *others = counts.most_common()
    if others and others[0][1] == n:
        raise GeometryError(
            f"slices have different ImageOrientationPatient or sizes, {n} slices each "
            f"(e.g. {Path(str(kept[0].filename)).name}); the folder mixes stacks",
            folder,
        )
    _note(folder, [h for h in kept if _stack_key(h) != main], "other orientation or size")
    return [h for h in kept if _stack_key(h) == main]


def image_type_values(header: pydicom.Dataset) -> list[str]:
    """ImageType as upper-case strings (a single value becomes a list of one)."""
    value = header.get("ImageType", [])
    return [str(v).upper() for v in ([value] if isinstance(value, str) else value)]


def _stack_key(header: pydicom.Dataset) -> tuple:
    orientation = header.get("ImageOrientationPatient")
    rounded = tuple(round(float(v), 3) for v in orientation) if orientation else None
    return rounded, int(header.Rows), int(header.Columns)


def _note(folder: str | os.PathLike, left_out: list[pydicom.Dataset], why: str) -> None:
    if left_out:
        names = ", ".join(Path(str(h.filename)).name for h in left_out[:5])
        more = ", ..." if len(left_out) > 5 else ""
        log.info("%s: left out %d slice(s) of the series (%s): %s%s", folder, len(left_out), why,
                 names, more)


def refuse_non_images(path: str | os.PathLike, non_images: list[tuple[str, str, str]]) -> None:
    """Raise the one-line error for ``path`` holding only non-image objects.

    ``non_images`` holds (file name, kind, SOP class UID) per object, as
    :attr:`Scan.non_images`.

    Raises
    ------
    ImageReadError
        always: "holds only a DICOM-SEG (<UID>): read it as labels with ...".
    """
    kinds = Counter((kind, uid) for _, kind, uid in non_images)
    parts = []
    for (kind, uid), n in kinds.items():
        names = [name for name, k, u in non_images if (k, u) == (kind, uid)]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        article = "an" if kind.startswith(("RT", "A", "E", "I", "O", "U")) else "a"
        parts.append(f"{article if n == 1 else n} {kind} ({uid}: {shown})")
    hint = "medseg reads image series (CT, MR, PET, ...)"
    if all(kind in _LABEL_KINDS for kind, _ in kinds):
        hint = "read it as labels with read_labels(..., reference=SERIES)"
    raise ImageReadError(f"holds only {', '.join(parts)}, no image series: {hint}", path)
