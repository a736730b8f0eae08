"""NRRD and MetaImage through SimpleITK (LPS <-> RAS through :mod:`medseg.io.lps`).

ITK describes a grid by origin ``o``, spacing ``s`` and direction ``D`` (3 x 3,
row-major in ``GetDirection()``) in LPS world millimetres, and
``sitk.GetArrayFromImage`` returns arrays indexed (z, y, x). medseg uses
(x, y, z) arrays and RAS affines. :func:`sitk_to_volume` and
:func:`volume_to_sitk` are where ITK images and Volumes meet::

    affine_lps = [[D @ diag(s), o], [0, 0, 0, 1]]
    affine_ras = diag(-1, -1, 1, 1) @ affine_lps

Multi-component (vector) images and 4D scalar images become channel-first
(C, x, y, z) arrays, and the other way round when writing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import GeometryError, ImageWriteError
from medseg.io.atomic import atomic_path, check_writable_dir
from medseg.io.formats import error_reason
from medseg.io.layout import as_fortran
from medseg.io.lps import LPS_TO_RAS
from medseg.volume import Volume

__all__ = [
    "READ_ERRORS", "sitk_to_volume", "volume_to_sitk", "read_sitk", "write_sitk",
]

log = logging.getLogger(__name__)

_DETACHED = (".nhdr", ".mhd")
#: SimpleITK raises RuntimeError for every file it cannot read (reproduced in tests/io:
#: not an image, an NRRD or MetaImage header field it rejects, data shorter than the
#: header says); :func:`medseg.io.read_volume` turns it into an ImageReadError.
READ_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,)


def sitk_to_volume(
    image: sitk.Image, source: str | os.PathLike = "<SimpleITK image>", meta: dict | None = None
) -> Volume:
    """Convert a SimpleITK image (LPS, (z, y, x) array) to a Volume (RAS, (x, y, z)).

    A 3D scalar image gives (x, y, z); a 3D vector image or a 4D scalar image
    gives (C, x, y, z).

    Raises
    ------
    GeometryError
        a 2D image, or more than 4 dimensions including components.
    """
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    ndim = dim + (components > 1)
    if dim != 3 and ndim != 4:
        size = " x ".join(str(n) for n in image.GetSize())
        extra = f" with {components} components" if components > 1 else ""
        raise GeometryError(f"is {dim}D (size {size}{extra}), expected a 3D volume", source)
    array = sitk.GetArrayFromImage(image)  # (z, y, x), (z, y, x, C) or (t, z, y, x)
    if components > 1:  # (z, y, x, C) -> (C, x, y, z)
        array = array.transpose(3, 2, 1, 0)
    else:  # (z, y, x) -> (x, y, z); (t, z, y, x) -> (t, x, y, z)
        array = array.transpose(tuple(range(dim))[::-1])
        if dim == 4:
            array = np.moveaxis(array, -1, 0)
    affine = affine_of(image)
    return Volume(array, affine, {"source": str(source), **(meta or {})})


def affine_of(image: sitk.Image) -> np.ndarray:
    """Voxel -> RAS+ mm affine (4, 4) of the first three axes of a SimpleITK image."""
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return LPS_TO_RAS @ affine_lps


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a Volume to a SimpleITK image (LPS geometry, channels as components).

    bool arrays are stored as uint8 and float16 as float32 (ITK has neither).
    """
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if volume.has_channels:  # (C, x, y, z) -> (z, y, x, C)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(3, 2, 1, 0)),
                                       isVector=True)
    else:  # (x, y, z) -> (z, y, x), C-contiguous without a slow transposed copy
        image = sitk.GetImageFromArray(as_fortran(array).T)
    affine_lps = LPS_TO_RAS @ volume.affine
    spacing = np.sqrt((affine_lps[:3, :3] ** 2).sum(axis=0))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (affine_lps[:3, :3] / spacing[None, :]).ravel()])
    image.SetOrigin([float(o) for o in affine_lps[:3, 3]])
    return image


def read_sitk(path: str | os.PathLike) -> Volume:
    """Read an NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) file.

    Raises
    ------
    GeometryError
        the image is 2D or has more than 4 dimensions including components.
    READ_ERRORS
        SimpleITK cannot read the file (corrupt, truncated, not an image, a header
        field out of range); :func:`medseg.io.read_volume` names the file.
    """
    image = sitk.ReadImage(os.fspath(path))
    return sitk_to_volume(image, path, {"format": "sitk"})


def write_sitk(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` as NRRD or MetaImage (chosen by the extension), atomically.

    Parameters
    ----------
    volume : the image; channels become vector components.
    path : ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``. Detached headers (``.nhdr``,
        ``.mhd``) get their data file beside them; the header appears last.
    compress : gzip (zlib) the data at level 1, lossless.

    Raises
    ------
    ImageWriteError
        the folder is missing or not writable, or SimpleITK fails (no file is left).
    """
    image = volume_to_sitk(volume)
    target = Path(path)
    try:
        if target.name.lower().endswith(_DETACHED):
            _write_detached(image, target, compress)
        else:
            with atomic_path(target) as tmp:
                _itk_write(image, tmp, compress)
    except RuntimeError as exc:
        raise ImageWriteError(f"cannot write image ({error_reason(exc)})", path) from exc
    log.debug("wrote %s", target)
    return target


def _itk_write(image: sitk.Image, path: Path, compress: bool) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(os.fspath(path))
    writer.SetUseCompression(compress)
    if compress:
        writer.SetCompressionLevel(1)
    writer.Execute(image)


def _write_detached(image: sitk.Image, target: Path, compress: bool) -> None:
    """Write header + data file in a temporary folder beside ``target``, then move them.

    The data file(s) are moved first and the header last, so a reader never
    finds a header whose data is missing; on failure nothing is left behind.
    """
    folder = check_writable_dir(target)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder))
    try:
        _itk_write(image, tmpdir / target.name, compress)
        for item in sorted(tmpdir.iterdir(), key=lambda p: p.name == target.name):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
