"""The cases an input path describes: a file, a DICOM series, a folder or a manifest.

:func:`list_cases` is what prediction reads its ``--input`` with. It lives beside
the manifests (:mod:`medseg.data.manifest`) because a manifest is one kind of
input; the naming of cases and the reading of their files stay in
:mod:`medseg.io.cases`, which imports nothing from :mod:`medseg.data`.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.data.manifest import load_manifest
from medseg.errors import DataError, ImageReadError
from medseg.io.cases import Case, case_name, images_by_case
from medseg.io.formats import DICOM_EXTENSION, is_dicom_file, is_image_path

__all__ = ["list_cases"]

_MANIFEST_SUFFIXES = (".json", ".csv")


def _is_dicom_folder(folder: Path) -> bool:
    return any(is_dicom_file(f) for f in sorted(folder.iterdir())[:50])


def _cases_in_folder(folder: Path) -> list[Case]:
    images = images_by_case(folder)
    if images:
        return [Case(name, (path,), split="test") for name, path in images.items()]
    if _is_dicom_folder(folder):
        return [Case(folder.name, (folder,), split="test")]
    series = sorted(p for p in folder.iterdir() if p.is_dir() and _is_dicom_folder(p))
    if series:
        return [Case(p.name, (p,), split="test") for p in series]
    raise DataError("folder holds no image files and no DICOM series", folder)


def _cases_in_manifest(path: Path) -> list[Case]:
    manifest = load_manifest(path)
    cases = manifest.split("test") or manifest.cases
    for case in cases:
        for image in case.images:
            if not image.exists():
                raise DataError(f"case {case.case_id!r}: image {image} does not exist", path)
    return cases


def list_cases(input_path: str | os.PathLike) -> list[Case]:
    """Every case ``input_path`` describes, in a fixed order.

    ``input_path`` is an image file, a DICOM file (one case named after the file
    without ``.dcm``: its series, or the multi-frame object it is), a DICOM series
    folder, a folder of image files (or of DICOM series folders), or a manifest
    (MSD ``dataset.json``: its ``test`` cases, else all its cases; ``.csv`` with
    an ``image`` column).
    Cases found from files have split ``test`` and no label.

    Raises
    ------
    ImageReadError
        ``input_path`` does not exist.
    DataError
        It holds no image, is of an unknown kind, or two inputs share a case
        name (their outputs would overwrite each other).
    """
    path = Path(input_path)
    if not path.exists():
        raise ImageReadError("input does not exist", path)
    if path.is_dir():
        cases = _cases_in_folder(path)
    elif path.suffix.lower() in _MANIFEST_SUFFIXES:
        cases = _cases_in_manifest(path)
    elif is_image_path(path):
        cases = [Case(case_name(path), (path,), split="test")]
    elif is_dicom_file(path):
        name = path.stem if path.suffix.lower() == DICOM_EXTENSION else path.name
        cases = [Case(name, (path,), split="test")]
    else:
        raise DataError("not an image, a DICOM folder or a manifest (.json/.csv)", path)
    names = [c.case_id for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"several inputs share the case name {duplicates[0]!r} (outputs would "
                        "overwrite each other)", path)
    return cases
