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
import math
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import isal.isal_zlib
import nibabel as nib
import numpy as np
from nibabel.nifti1 import data_type_codes, xform_codes
from nibabel.spatialimages import HeaderDataError

from medseg.errors import DataError, GeometryError, ImageReadError, ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.formats import check_spatial_ndim, error_reason
from medseg.io.gz import gzip_writer, is_gzip_file, open_maybe_gzip
from medseg.io.layout import as_fortran
from medseg.volume import Volume

__all__ = ["read_nifti", "write_nifti", "READ_ERRORS"]

log = logging.getLogger(__name__)

#: What nibabel and the (ISA-L) gzip layer raise for a corrupt or truncated file once
#: the header has passed :func:`_check_header`; :func:`medseg.io.read_volume` turns
#: them into one ImageReadError naming the file. Reproduced in tests/io: EOFError
#: (truncated .nii.gz), zlib / isal errors (damaged deflate stream), OSError
#: (gzip.BadGzipFile: a .gz that is not gzip), ValueError (nibabel: voxel data shorter
#: than the header says in a .nii.gz, a quaternion with b^2 + c^2 + d^2 > 1), and
#: nibabel's HeaderDataError for any header value :func:`_check_header` lets through.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, zlib.error, isal.isal_zlib.error, HeaderDataError,
)
_NIFTI1_MAX_DIM = 32767


def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a ``.nii`` or ``.nii.gz`` file.

    The header is checked before any voxel is read (see :func:`_check_header`);
    nibabel's own repairs of harmless oddities (``qfac`` 0, a ``vox_offset`` that
    is not a multiple of 16, pixdim signs when the sform gives the geometry) are
    logged, naming the file.

    Parameters
    ----------
    path : the file.

    Returns
    -------
    Volume with the array as nibabel's ``np.asanyarray(img.dataobj)`` gives it,
    (x, y, z) or, for 4D (x, y, z, C), channel first (C, x, y, z); affine
    ``img.affine`` (nibabel's ``header.get_best_affine()``, voxel -> RAS+ mm).
    ``meta`` holds ``source`` and ``format``.

    Raises
    ------
    ImageReadError
        a header field out of range (named with its value; ``scl_inter`` NaN or inf
        when ``scl_slope`` scales), or the file is not NIfTI.
    GeometryError
        the image is 2D, or 5D or more (other than (x, y, z, 1, C)), or the
        sform / qform / pixdim that place it hold NaN or inf, are singular, or have
        axes so nearly parallel that no direction can be named for one (the
        message names which of them gives the affine).
    READ_ERRORS
        a truncated or corrupt file (:func:`medseg.io.read_volume` names the file).
    """
    with open_maybe_gzip(path) as stream:
        klass, header = _read_header(stream, path)
        array = np.asanyarray(klass.ImageArrayProxy(stream, header, mmap=False))
    affine = header.get_best_affine()
    if not np.isfinite(affine).all():
        raise GeometryError(
            f"the {_affine_source(header)} holds NaN or inf: no voxel-to-world affine", path
        )
    array = check_spatial_ndim(_channels_first(array), path)
    try:
        return Volume(array, affine, {"source": str(path), "format": "nifti"})
    except GeometryError as exc:  # singular, or an axis without a direction: name the field
        raise GeometryError(f"the {_affine_source(header)}: {exc.message}", path) from None


class _FileLog(logging.LoggerAdapter):
    """Prefixes nibabel's header repair messages with the file they are about."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['path']}: {msg}", kwargs


def _read_header(
    stream: BinaryIO, path: str | os.PathLike
) -> tuple[type[nib.Nifti1Image], nib.Nifti1Header]:
    """The image class and the checked header at the start of ``stream``.

    Header extensions are not read (medseg keeps none of them), so a malformed
    extension cannot stop a read: the voxels start at ``vox_offset`` regardless.
    """
    klass, endianness = _nifti_class(stream.read(4), path)
    size = klass.header_class.template_dtype.itemsize
    stream.seek(0)
    block = stream.read(size)
    if len(block) < size:
        raise ImageReadError(f"truncated file: the header has {len(block)} of {size} bytes", path)
    header = klass.header_class(block, endianness, check=False)
    _check_header(header, path, None if is_gzip_file(path) else os.path.getsize(path))
    header.check_fix(logger=_FileLog(log, {"path": os.fspath(path)}))
    return klass, header


def _nifti_class(first4: bytes, path: str | os.PathLike) -> tuple[type[nib.Nifti1Image], str]:
    """Nifti1Image or Nifti2Image and the byte order, from the header size (348 or 540)."""
    if len(first4) < 4:
        raise ImageReadError(f"not NIfTI: {len(first4)} bytes, too short for a header", path)
    for order, code in (("little", "<"), ("big", ">")):
        size = int.from_bytes(first4, order)
        if size in (348, 540):
            return (nib.Nifti1Image if size == 348 else nib.Nifti2Image), code
    raise ImageReadError("not NIfTI: no header (sizeof_hdr is neither 348 nor 540)", path)


def _check_header(
    header: nib.Nifti1Header, path: str | os.PathLike, file_size: int | None
) -> None:
    """Raise ImageReadError naming the first header field that cannot describe this file.

    Checked: magic (single-file NIfTI), ``dim`` (1..7 axes, each >= 1 voxel),
    ``datatype`` (a NIfTI code with a voxel type) and ``bitpix`` (its size),
    ``vox_offset`` (finite, past the header, and with its voxels inside an
    uncompressed file of ``file_size`` bytes), the xform codes, ``pixdim``
    when no sform overrides it, and ``scl_inter`` when ``scl_slope`` asks for scaling.
    """
    problem = (
        _magic_problem(header) or _dim_problem(header) or _datatype_problem(header)
        or _offset_problem(header, file_size) or _xform_problem(header)
        or _scaling_problem(header)
    )
    if problem:
        raise ImageReadError(problem, path)


def _magic_problem(header: nib.Nifti1Header) -> str | None:
    magic = header["magic"].item()
    if magic == header.single_magic:
        return None
    if magic == header.pair_magic:
        return f"magic {magic!r} marks a .hdr/.img pair header; medseg reads single-file .nii"
    return f"magic {magic!r} is not {header.single_magic!r} (a single-file NIfTI)"


def _dim_problem(header: nib.Nifti1Header) -> str | None:
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        return f"dim[0] = {dim[0]} is outside 1..7 (the number of dimensions)"
    for axis in range(1, dim[0] + 1):
        if dim[axis] < 1:
            return f"dim[{axis}] = {dim[axis]}: every axis needs at least one voxel"
    return None


def _datatype_problem(header: nib.Nifti1Header) -> str | None:
    code = int(header["datatype"])
    if code not in data_type_codes.value_set():
        return f"datatype {code} is not a NIfTI data type code"
    label, bits = data_type_codes.label[code], 8 * data_type_codes.dtype[code].itemsize
    if bits == 0:
        return f"datatype {code} ({label}) has no voxel type"
    if int(header["bitpix"]) != bits:
        return (f"bitpix {int(header['bitpix'])} does not match datatype {code} "
                f"({label}, {bits} bits per voxel)")
    return None


def _offset_problem(header: nib.Nifti1Header, file_size: int | None) -> str | None:
    offset, first = float(header["vox_offset"]), header.single_vox_offset
    if not math.isfinite(offset):
        return f"vox_offset {offset} is not a byte offset"
    if offset < first:
        return f"vox_offset {offset:g} lies inside the header (voxels start at {first} or later)"
    if file_size is None:
        return None
    dim = [int(d) for d in header["dim"]]
    need = int(offset) + math.prod(dim[1 : dim[0] + 1]) * int(header["bitpix"]) // 8
    if need > file_size:
        return (f"truncated file: {file_size} bytes, but vox_offset {offset:g} plus the "
                f"voxels the header describes need {need}")
    return None


def _xform_problem(header: nib.Nifti1Header) -> str | None:
    for name in ("sform_code", "qform_code"):
        code = int(header[name])
        if code not in xform_codes.value_set():
            valid = ", ".join(map(str, sorted(xform_codes.value_set())))
            return f"{name} {code} is not a NIfTI xform code ({valid})"
    if int(header["sform_code"]) > 0:
        return None  # the sform places the voxels; pixdim is not used
    sizes = [float(p) for p in header["pixdim"][1:4]]
    if not all(math.isfinite(p) and p > 0 for p in sizes):
        shown = ", ".join(f"{p:g}" for p in sizes)
        return (f"pixdim[1:4] = ({shown}) must be positive voxel sizes in mm "
                f"(the {_affine_source(header)} uses them)")
    return None


def _scaling_problem(header: nib.Nifti1Header) -> str | None:
    """A finite ``scl_inter`` is needed when ``scl_slope`` scales (nibabel's rule: a slope of
    0, NaN or inf means no scaling and the intercept is ignored)."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or not math.isfinite(slope) or math.isfinite(inter):
        return None
    return (f"scl_inter {inter:g} is not a finite number, but scl_slope {slope:g} asks for "
            "scaling (value = scl_slope * stored + scl_inter); set scl_inter to 0, or "
            "scl_slope to 0 for none")


def _affine_source(header: nib.Nifti1Header) -> str:
    """Which header fields give the affine, as nibabel's ``get_best_affine`` chooses."""
    if int(header["sform_code"]) > 0:
        return f"sform (sform_code {int(header['sform_code'])})"
    if int(header["qform_code"]) > 0:
        return f"qform (qform_code {int(header['qform_code'])}) with pixdim"
    return "pixdim fallback affine (sform_code and qform_code 0)"


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
        raise ImageWriteError(f"cannot write NIfTI ({error_reason(exc)})", path) from exc
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
