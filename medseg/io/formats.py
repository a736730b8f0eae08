"""File formats medseg reads and writes, recognised by file-name extension.

Helpers that touch the disk at most to tell a folder and to sniff a DICOM file's
preamble: the extension table, :func:`is_image_path` for listing image files in a
folder, :func:`is_dicom_file` (a ``.dcm`` name or the DICM preamble),
:func:`format_of` for dispatching a path to a reader or writer, and :func:`check_spatial_ndim`
which every reader uses to turn a raw array into the (x, y, z) /
(C, x, y, z) layout of :class:`~medseg.volume.Volume`, and :func:`error_reason`,
which says in one line what a reading or writing library complained about.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, ImageReadError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "SITK_EXTENSIONS",
    "is_image_path",
    "format_of",
    "is_dicom_file",
    "DICOM_EXTENSION",
    "extension_of",
    "check_spatial_ndim",
    "error_reason",
]

#: NIfTI-1/2, read and written through nibabel (``.nii.gz`` through isal).
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")
#: NRRD and MetaImage (attached and detached headers), through SimpleITK.
SITK_EXTENSIONS: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd")
#: Every image file extension medseg reads and writes (lower case). A DICOM
#: series is read from its folder instead (see :func:`medseg.io.read_volume`).
SUPPORTED_EXTENSIONS: tuple[str, ...] = NIFTI_EXTENSIONS + SITK_EXTENSIONS
#: A DICOM file is read as its series (or as the multi-frame object it is);
#: files without this extension are recognised by their preamble.
DICOM_EXTENSION = ".dcm"
_DICM_OFFSET = 128


def extension_of(path: str | os.PathLike) -> str | None:
    """The supported extension ``path`` ends with (lower case), or None."""
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:  # ".nii.gz" is tested before ".nii"
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name of ``path`` has a supported image extension.

    Only the name is looked at (the disk is not touched), case-insensitively.
    Hidden names (starting with ``.``, such as the temporary files of an
    interrupted atomic write) are not images. DICOM series are folders and
    are not recognised here.

    >>> is_image_path("case_001.nii.gz"), is_image_path("notes.txt")
    (True, False)
    """
    name = Path(path).name
    return not name.startswith(".") and extension_of(name) is not None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for an existing file named ``*.dcm`` or starting with the DICOM preamble.

    The preamble is 128 bytes followed by ``DICM`` (PS3.10); only those 132 bytes
    are read. Hidden files are not DICOM files here.
    """
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    if path.suffix.lower() == DICOM_EXTENSION:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(_DICM_OFFSET + 4)[_DICM_OFFSET:] == b"DICM"
    except OSError:
        return False


def format_of(path: str | os.PathLike, for_writing: bool = False) -> str:
    """``"nifti"``, ``"sitk"`` or ``"dicom"`` (reading only: an existing folder or DICOM file).

    A file without a supported extension is ``"dicom"`` when :func:`is_dicom_file`
    says so (``.dcm``, or the DICM preamble).

    Raises
    ------
    ImageReadError
        (``for_writing=False``) the path has no supported extension and is no DICOM file.
    medseg.errors.ImageWriteError
        (``for_writing=True``) the path is a folder or has no supported extension.
    """
    from medseg.errors import ImageWriteError

    error = ImageWriteError if for_writing else ImageReadError
    if Path(path).is_dir():
        if for_writing:
            raise error(
                "is a folder; writing DICOM series is not supported, write one of "
                f"{', '.join(SUPPORTED_EXTENSIONS)}",
                path,
            )
        return "dicom"
    ext = extension_of(path)
    if ext is None and not for_writing and is_dicom_file(path):
        return "dicom"
    if ext is None:
        suffix = "".join(Path(path).suffixes) or "no extension"
        raise error(
            f"unsupported image file type ({suffix}): expected one of "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
            + ("" if for_writing else ", a DICOM file or a DICOM folder"),
            path,
        )
    return "nifti" if ext in NIFTI_EXTENSIONS else "sitk"


def check_spatial_ndim(
    array: np.ndarray, path: str | os.PathLike, channels: bool = True
) -> np.ndarray:
    """Return ``array`` if it is (x, y, z), or (C, x, y, z) when ``channels``.

    Parameters
    ----------
    array : image array already in medseg axis order (channel first).
    path : the file it came from (named in the error).
    channels : accept a channel-first 4D array.

    Raises
    ------
    GeometryError
        a 1D/2D image ("is 2D, expected a 3D volume"), a 5D or larger image, or a
        4D image when ``channels`` is False.
    """
    if array.ndim == 3 or (array.ndim == 4 and channels):
        return array
    expected = "a 3D volume" + (" (or 4D with channels)" if channels else "")
    shape = " x ".join(str(s) for s in array.shape)
    raise GeometryError(f"is {array.ndim}D (shape {shape}), expected {expected}", path)


def error_reason(exc: BaseException) -> str:
    """What a library exception says, on one line, for a message naming the file.

    SimpleITK's ``RuntimeError`` is cut down to ITK's own words: the
    "Exception thrown in SimpleITK ...: <source file>:<line>:" line and the
    "ITK ERROR: Class(0x...):" prefixes go; of a teem (NRRD) trace only its last,
    most specific ``[nrrd]`` line stays. Other messages keep all their lines.
    An early end of a (compressed) stream is called a truncated file.

    >>> error_reason(EOFError("Compressed file ended before the end-of-stream marker"))
    'truncated file: Compressed file ended before the end-of-stream marker'
    """
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, RuntimeError):
        lines = _itk_lines(lines)
    text = " ".join(lines) or type(exc).__name__
    if isinstance(exc, EOFError) or "ended before" in text:
        return f"truncated file: {text}"
    return text


_ITK_PREFIX = re.compile(r"^(?:s?itk::)?(?:ITK )?ERROR: (?:\w+\(0x[0-9a-fA-F]+\): )?")


def _itk_lines(lines: list[str]) -> list[str]:
    if lines and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]
    if lines and lines[-1].startswith("[nrrd]"):
        return lines[-1:]
    return [_ITK_PREFIX.sub("", line) for line in lines]
