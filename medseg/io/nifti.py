"""NIfTI-1 / NIfTI-2 (``.nii``, ``.nii.gz``) through nibabel, gzip through ISA-L.

Reading gives exactly what nibabel gives: ``img.affine`` (nibabel's sform /
qform rules) and ``np.asanyarray(img.dataobj)`` (scaled floats when
``scl_slope`` is set, the on-disk dtype otherwise, so label maps stay integer).
The array is loaded into memory (no memory map). A 4D image stored channels
last, (x, y, z, C), becomes channel first, (C, x, y, z); a 5D image of shape
(x, y, z, 1, C) (the NIfTI vector layout ITK writes) is treated the same way.

Writing stores NIfTI-1 (NIfTI-2 only when a dimension exceeds 32767) with the
affine as both sform and qform (code 1, scanner) and units mm; channels are
written last. NIfTI-1 stores the affine in float32, so a round trip keeps it to
about 1e-7 relative (1e-5 mm at 100 mm from the origin).
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import isal.isal_zlib
import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medseg.errors import DataError, ImageReadError, ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.formats import check_spatial_ndim
from medseg.io.gz import gzip_writer, open_maybe_gzip
from medseg.io.layout import as_fortran
from medseg.volume import Volume

__all__ = ["read_nifti", "write_nifti"]

log = logging.getLogger(__name__)

_READ_ERRORS = (
    OSError, EOFError, ValueError, HeaderDataError, ImageFileError, zlib.error,
    isal.isal_zlib.error,
)
_NIFTI1_MAX_DIM = 32767


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a ``.nii`` or ``.nii.gz`` file.

    Parameters
    ----------
    path : the file.

    Returns
    -------
    Volume with the array as nibabel's ``np.asanyarray(img.dataobj)`` gives it,
    (x, y, z) or, for 4D (x, y, z, C), channel first (C, x, y, z); affine
    ``img.affine`` (voxel -> RAS+ mm). ``meta`` holds ``source`` and ``format``.

    Raises
    ------
    ImageReadError
        the file is truncated, corrupt or not NIfTI.
    GeometryError
        the image is 2D, or 5D or more (other than (x, y, z, 1, C)).
    """
    try:
        with open_maybe_gzip(path) as stream:
            klass = _nifti_class(stream.read(4))
            stream.seek(0)
            file_map = klass.make_file_map({"image": stream})
            img = klass.from_file_map(file_map, mmap=False)
            array = np.asanyarray(img.dataobj)
            affine = img.affine
    except _READ_ERRORS as exc:
        raise ImageReadError(f"cannot read as NIfTI ({_reason(exc)})", path) from exc
    array = check_spatial_ndim(_channels_first(array), path)
    return Volume(array, affine, {"source": str(path), "format": "nifti"})


def _nifti_class(first4: bytes) -> type[nib.Nifti1Image]:
    """Nifti1Image or Nifti2Image from the header size (348 or 540, either byte order)."""
    if len(first4) < 4:
        raise ImageFileError("file too short for a NIfTI header")
    sizes = {int.from_bytes(first4, "little"), int.from_bytes(first4, "big")}
    if 348 in sizes:
        return nib.Nifti1Image
    if 540 in sizes:
        return nib.Nifti2Image
    raise ImageFileError("no NIfTI header (sizeof_hdr is neither 348 nor 540)")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EOFError) or "ended before" in text:
        return f"truncated file: {text}"
    return text


def _channels_first(array: np.ndarray) -> np.ndarray:
    """(x, y, z, C) -> (C, x, y, z); (x, y, z, 1, C) -> (C, x, y, z); others unchanged."""
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    if array.ndim == 4:
        return np.moveaxis(array, -1, 0)
    return array


def write_nifti(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically.

    ``.nii.gz`` is compressed with ISA-L (see :mod:`medseg.io.gz`). Data is
    written in its own dtype, unscaled, except: bool -> uint8, float16 ->
    float32, and int64/uint64 -> the smallest of uint8, int16, int32 that holds
    the values (nibabel refuses 64-bit integers by default; label maps rarely
    need them). A C-ordered array is first copied to x-fastest order in
    cache-sized tiles (:mod:`medseg.io.layout`; extra memory = one array).

    Raises
    ------
    ImageWriteError
        the folder is missing or not writable, or writing fails (no file is left).
    DataError
        complex data or 64-bit integers beyond the int32 range.
    """
    array = _storable(volume.array, path)
    if volume.has_channels:
        array = np.moveaxis(array, 0, -1)
    array = as_fortran(array)  # nibabel writes x-fastest; tiled copy is 5-8x faster
    too_big = max(array.shape) > _NIFTI1_MAX_DIM
    klass = nib.Nifti2Image if too_big else nib.Nifti1Image
    img = klass(array, volume.affine, dtype=array.dtype)
    img.set_sform(volume.affine, code="scanner")
    img.set_qform(volume.affine, code="scanner")
    img.header.set_xyzt_units(xyz="mm")
    target = Path(path)
    compress = target.name.lower().endswith(".gz")
    try:
        with atomic_path(target) as tmp:
            if compress:
                with gzip_writer(tmp) as stream:
                    img.to_file_map(klass.make_file_map({"image": stream}))
            else:
                img.to_filename(tmp)
    except (OSError, ValueError, HeaderDataError) as exc:
        if isinstance(exc, ImageWriteError):
            raise
        raise ImageWriteError(f"cannot write NIfTI ({_reason(exc)})", path) from exc
    log.debug("wrote %s", target)
    return target


def _storable(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``array`` in a dtype NIfTI stores without scaling (see :func:`write_nifti`)."""
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8)
    if kind == "c":
        raise DataError(f"complex data ({array.dtype}) cannot be written as NIfTI", path)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if kind in "iu" and array.dtype.itemsize == 8:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype)
        raise DataError(
            f"64-bit integer values {lo}..{hi} do not fit int32; convert the array to "
            "float64 or int32 before writing NIfTI",
            path,
        )
    return array
