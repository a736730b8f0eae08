"""Reading and writing volumes: NIfTI, DICOM series, NRRD, MetaImage.

:func:`read_volume` and :func:`write_volume` choose the format from the path:

==============================  ==================================================
path                            through
==============================  ==================================================
``.nii``, ``.nii.gz``           nibabel (gzip through ISA-L, :mod:`medseg.io.gz`)
``.nrrd``, ``.nhdr``            SimpleITK (:mod:`medseg.io.sitk`)
``.mha``, ``.mhd``              SimpleITK
a folder                        a DICOM series, SimpleITK + GDCM
                                (:mod:`medseg.io.dicom.image`), read only
a DICOM file (``.dcm``, or      its own stack of its series (the files of its
the DICM preamble)              folder with its SeriesInstanceUID), or the
                                enhanced multi-frame object or Siemens mosaic it
                                is; read only
==============================  ==================================================

Every Volume comes back indexed (x, y, z), or (C, x, y, z) with channels, with
an affine mapping voxel indices to RAS+ mm; the LPS world of ITK and DICOM is
converted through :mod:`medseg.io.lps` and nowhere else. Every write is atomic (a temporary
file in the destination folder, renamed when complete). Submodules are
imported on first use, so ``import medseg.io`` stays cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from medseg.errors import ImageReadError, MedsegError, UsageError
from medseg.io.atomic import check_writable_dir
from medseg.io.formats import (
    SUPPORTED_EXTENSIONS,
    check_spatial_ndim,
    error_reason,
    format_of,
    is_image_path,
)
from medseg.volume import Volume

__all__ = ["read_volume", "write_volume", "SUPPORTED_EXTENSIONS", "is_image_path"]

log = logging.getLogger(__name__)


def read_volume(
    path: str | os.PathLike,
    series: str | None = None,
    *,
    ndim: int = 3,
    channels: bool = True,
    tilt: bool = True,
    stack: int | str | None = None,
) -> Volume:
    """Read an image file, a DICOM file or a DICOM series folder.

    Parameters
    ----------
    path : a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file,
        a folder holding a DICOM series, or one DICOM file (its series, or the
        multi-frame object it is).
    series : SeriesInstanceUID to read when a DICOM folder holds several series.
    ndim : spatial dimensions required; medseg handles 3 only (2D images are errors).
    channels : accept a 4D image as channel-first (C, x, y, z); if False only
        (x, y, z) is accepted.
    tilt : DICOM only: resample a gantry-tilted series onto an orthogonal grid with
        a warning (True) or refuse it with a GeometryError (False).
    stack : DICOM only: the image stack to read when a series or object holds
        several (magnitude and phase, echoes, Dixon images, time points): its
        1-based number or a name such as ``"phase"`` or ``"echo2"``
        (:mod:`medseg.io.dicom.stacks`); a single-frame file reads its own stack.

    Returns
    -------
    Volume with array (x, y, z) or (C, x, y, z) in the file's dtype (scaled
    floats when a NIfTI has ``scl_slope``; DICOM rescale applied) and affine
    voxel -> RAS+ mm. ``meta["source"]`` is the path; DICOM adds
    ``dicom_files``, ``series_uid`` and ``study_uid``.

    Raises
    ------
    ImageReadError
        missing path, unsupported extension, corrupt/truncated/non-image file, a
        header field out of range, a folder without DICOM image files or with
        several series, a DICOM input with several stacks and no ``stack`` (lists
        them), a DICOM folder or file holding only non-image objects
        (DICOM-SEG, RTSTRUCT, RT Dose, ...), compressed pixel data no installed
        decoder handles (names the codec and the package that adds it).
    GeometryError
        a 2D or 5D image, an affine with NaN or inf, or a DICOM series with
        missing slices or uneven spacing, or gantry-tilted with ``tilt=False``.
    UsageError
        ``ndim`` other than 3, ``series`` given for a file / not in the folder,
        ``stack`` given for a non-DICOM file, out of range or unknown (lists the stacks).

    Every error names ``path`` (or, inside a DICOM folder, the file concerned):
    the exceptions the reading libraries raise for a bad file (each reader's
    ``READ_ERRORS``) become ImageReadError here, and an error raised without a
    path gets ``path``.
    """
    if ndim != 3:
        raise UsageError(f"ndim={ndim} is not supported: medseg reads 3D volumes (ndim=3)")
    if not os.path.exists(path):
        raise ImageReadError("no such file or folder", path)
    kind = format_of(path)
    if series is not None and kind != "dicom":
        raise UsageError("series= selects a DICOM series and needs a folder", path)
    if stack is not None and kind != "dicom":
        raise UsageError(f"stack={stack!r} selects a stack of a DICOM series or object; this "
                         "is not DICOM", path)
    reader, library_errors, what = _reader(kind)
    try:
        volume = reader(path, series, stack=stack, tilt=tilt) if kind == "dicom" \
            else reader(path)
        check_spatial_ndim(volume.array, path, channels)
    except MedsegError as exc:
        if exc.path is None:  # e.g. Volume(...) rejecting the geometry a file gave
            exc.path = os.fspath(path)
            exc.args = (str(exc),)
        raise
    except library_errors as exc:
        raise ImageReadError(f"cannot read {what} ({error_reason(exc)})", path) from exc
    log.debug("read %s: %r", path, volume)
    return volume


def _reader(kind: str) -> tuple[Callable[..., Volume], tuple[type[BaseException], ...], str]:
    """The reader of format ``kind``, its ``READ_ERRORS`` and what a message calls the input.

    ``READ_ERRORS`` are the library exceptions a bad file makes the reader raise;
    each reader module lists those it reproduced.
    """
    if kind == "nifti":
        from medseg.io import nifti

        return nifti.read_nifti, nifti.READ_ERRORS, "as NIfTI"
    if kind == "sitk":
        from medseg.io import sitk

        return sitk.read_sitk, sitk.READ_ERRORS, "image"
    from medseg.io.dicom import image

    return image.read_dicom_image, image.READ_ERRORS, "the DICOM series"


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path``, in the format its extension names, atomically.

    Parameters
    ----------
    volume : the image, (x, y, z) or (C, x, y, z), with its RAS+ mm affine.
    path : ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.

    Returns
    -------
    The path written.

    Raises
    ------
    ImageWriteError
        unsupported extension, a folder as target, missing or read-only output
        folder, or a failed write. Nothing is left at ``path`` (an existing file
        there stays intact) and no temporary file remains.
    """
    if not isinstance(volume, Volume):
        raise UsageError(f"write_volume needs a medseg Volume, got {type(volume).__name__}", path)
    kind = format_of(path, for_writing=True)
    check_writable_dir(path)  # before format-specific work; atomic_path checks again
    if kind == "nifti":
        from medseg.io.nifti import write_nifti

        return write_nifti(volume, path)
    from medseg.io.sitk import write_sitk

    return write_sitk(volume, path)

