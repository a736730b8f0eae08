"""Label maps in and out, whatever the format: NIfTI / NRRD / MHA, DICOM-SEG, RTSTRUCT.

* :func:`read_labels` gives a :class:`~medseg.volume.LabelMap` (x, y, z) with
  ``meta["label_names"]`` (value -> name). An image file is read as it is
  (integer values required); a DICOM-SEG or RTSTRUCT is turned into a label map
  on the grid of its ``reference`` series
  (:func:`medseg.io.dicom.labels.read_dicom_labels`): the label values and names the
  writer gave (medseg's own files keep them), else Segment Numbers / ROI Numbers and
  the Segment Labels / ROI Names.
* :func:`write_labels` writes a label map to an image file, or to a ``.dcm``
  DICOM-SEG / RTSTRUCT referencing the series it was predicted on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from medseg.errors import UsageError, check_option
from medseg.volume import LabelMap, Volume, label_array

__all__ = ["read_labels", "write_labels", "as_label_map", "is_dicom_labels", "DICOM_FORMATS"]

log = logging.getLogger(__name__)

#: The DICOM objects :func:`write_labels` writes for a ``.dcm`` path.
DICOM_FORMATS = ("seg", "rtstruct")


def is_dicom_labels(path: str | os.PathLike) -> bool:
    """True for a DICOM-SEG or RTSTRUCT file (read from its header, not its name)."""
    from medseg.io.dicom.labels import dicom_label_kind

    return dicom_label_kind(path) is not None


def read_labels(
    path: str | os.PathLike,
    reference: str | os.PathLike | None = None,
    overlap: str = "error",
) -> LabelMap:
    """Read a label map from an image file, a DICOM-SEG or an RTSTRUCT.

    Parameters
    ----------
    path : ``.nii.gz`` / ``.nrrd`` / ``.mha`` ... label file, or a DICOM-SEG / RTSTRUCT file.
    reference : the DICOM series folder a SEG / RTSTRUCT was drawn on (required for
        those, ignored for image files); the result is on its grid.
    overlap : where segments / ROIs overlap: ``"error"`` (default) refuses, naming
        them; ``"first"`` keeps the earlier segment / ROI; ``"last"`` the later one.

    Returns
    -------
    LabelMap (x, y, z), RAS+ mm affine (for a SEG / RTSTRUCT: the reference's shape and
    affine), uint8 (uint16 above 255 labels); ``meta["label_names"]`` is value -> name
    (empty for image files), ``meta["source"]`` the path.

    Raises
    ------
    UsageError : a SEG / RTSTRUCT without ``reference``; an unknown ``overlap``.
    DataError : non-integer or negative values; overlapping segments / ROIs with
        ``overlap="error"``; a reference that does not match (another frame of
        reference, referenced images missing, contours or frames on no slice).
    ImageReadError, GeometryError : as :func:`medseg.io.read_volume` for unreadable files.
    """
    from medseg.io.dicom.labels import OVERLAP_POLICIES, dicom_label_kind, read_dicom_labels

    check_option(overlap, OVERLAP_POLICIES, "overlap policy")
    kind = dicom_label_kind(path)
    if kind is None:
        from medseg.io import read_volume

        labels = as_label_map(read_volume(path, channels=False), path)
        labels.meta["label_names"] = {}
        return labels
    if reference is None:
        what = "a DICOM-SEG" if kind == "seg" else "an RTSTRUCT"
        raise UsageError(f"is {what}: reading it as labels needs the image series it was "
                         "drawn on, give --reference SERIES_DIR (reference= in Python)", path)
    return read_dicom_labels(path, reference, overlap)


def as_label_map(volume: Volume, path: str | os.PathLike) -> LabelMap:
    """``volume`` as a LabelMap (label files are often stored as floats): the values are
    checked and narrowed by :func:`medseg.volume.label_array`, errors naming ``path``."""
    return LabelMap(label_array(volume.array, "label map", path), volume.affine,
                    dict(volume.meta))


def write_labels(
    labels: Volume,
    out: str | os.PathLike,
    label_names: Mapping[int, str] | None = None,
    *,
    reference_files: Sequence[str | os.PathLike] | None = None,
    dicom_format: str = "seg",
    algorithm_name: str = "medseg",
) -> Path:
    """Write a label map: an image file, or (``.dcm``) a DICOM-SEG or RTSTRUCT.

    Parameters
    ----------
    labels : integer label map (x, y, z), RAS+ mm affine; for ``.dcm`` on the series' grid.
    out : ``.nii.gz`` / ``.nrrd`` / ``.mha`` ... or ``.dcm``; written atomically.
    label_names : value -> segment label / ROI name (``.dcm`` only).
    reference_files : the series' slice files the DICOM object references (``.dcm`` only).
    dicom_format : ``"seg"`` (DICOM-SEG, :func:`~medseg.io.dicom.seg.write_dicom_seg`) or
        ``"rtstruct"`` (:func:`~medseg.io.dicom.rtstruct.write_rtstruct`). Label values
        and names survive: reading the file back gives the same map.
    algorithm_name : the algorithm the DICOM object names.

    Raises
    ------
    UsageError : ``.dcm`` without ``reference_files``; an unknown ``dicom_format``.
    """
    if Path(out).suffix.lower() != ".dcm":
        from medseg.io import write_volume

        return write_volume(labels, out)
    check_option(dicom_format, DICOM_FORMATS, "DICOM format")
    if not reference_files:
        raise UsageError("a DICOM-SEG / RTSTRUCT output references the DICOM series the labels "
                         "are on: give --reference SERIES_DIR (a DICOM input)", out)
    if dicom_format == "seg":
        from medseg.io.dicom.seg import write_dicom_seg as writer
    else:
        from medseg.io.dicom.rtstruct import write_rtstruct as writer
    from medseg.io.dicom.derived import DerivedSeries

    return writer(labels, out, DerivedSeries(reference_files, dict(label_names or {}),
                                             algorithm_name))
