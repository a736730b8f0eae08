"""Write a label map as a DICOM RT Structure Set (RTSTRUCT) referencing its source series.

One ROI per label value present (numbered 1..n in increasing label value, as
the segments of :mod:`medseg.io.dicom_seg`), named from ``label_names`` and
given a distinct display colour. Each ROI holds CLOSED_PLANAR contours, one
per connected outline on a source slice, in LPS patient coordinates (mm);
holes are inner contours, so the even-odd rule (a point inside an odd number
of the ROI's contours on a slice is inside) gives the mask back. The structure
set references the study, the series, the frame of reference and every SOP
instance (RT Referenced Series > Contour Image Sequence), and each contour
references its slice.

Contouring uses scikit-image's ``measure.find_contours`` (marching squares at
level 0.5) on the zero-padded binary slice: a light pure-wheel dependency that
returns closed, sub-pixel outlines which pass midway between inside and
outside pixel centres, so rasterising them again (pixel centres, even-odd)
gives back the very same pixels. rt-utils would pull OpenCV (a large binary)
for the same job. Collinear points along straight runs are dropped, which
keeps the outline exactly.

The dataset is built with pydicom (highdicom has no RT support) following the
RT Structure Set IOD (PS3.3 A.19) and written atomically.
"""

from __future__ import annotations

import colorsys
import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.errors import ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_seg import DerivedSeries, label_frames, slice_pixel_to_lps
from medseg.volume import Volume

__all__ = ["write_rtstruct", "slice_contours", "roi_colour", "RTSTRUCT_SOP_CLASS"]

log = logging.getLogger(__name__)

#: RT Structure Set Storage.
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # (retired) Detached Study Management, per A.19
#: Tags copied from the source series (Patient and General Study modules).
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def roi_colour(index: int) -> list[int]:
    """A distinct RGB display colour (0-255) for the ``index``-th ROI (golden-ratio hues).

    >>> roi_colour(0)
    [255, 64, 64]
    """
    hue = (index * 0.618033988749895) % 1.0
    return [int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.75, 1.0)]


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a binary slice, in (row, column) pixel coordinates.

    Parameters
    ----------
    mask : (rows, cols) bool, indexed like the slice's pixels.

    Returns
    -------
    One (n, 2) float array per outline (outer boundaries and holes), the
    closing point not repeated. Points lie midway between inside and outside
    pixel centres, so no pixel centre lies on an outline.
    """
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    return [_drop_collinear(contour[:-1] - 1.0)  # closed: the first point is repeated last
            for contour in measure.find_contours(padded, 0.5) if len(contour) > 3]


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """The corners of a closed outline: points where the direction changes (same outline)."""
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    straight = (np.abs(cross) < 1e-9) & ((incoming * outgoing).sum(axis=1) > 0)
    return points[~straight]


def write_rtstruct(labels: Volume, out_path: str | os.PathLike, series: DerivedSeries) -> Path:
    """Write ``labels`` as an RT Structure Set referencing the source series.

    ``labels``, ``out_path`` and ``series`` (:class:`~medseg.io.dicom_seg.DerivedSeries`)
    are as for :func:`medseg.io.dicom_seg.write_dicom_seg` (a label map on the series'
    grid, a ``.dcm`` written atomically, the source slice files and names), and so are the
    errors (GeometryError off the grid; DataError without foreground, for a non-integer
    map or a slice without geometry/UIDs; ImageWriteError). ``series.label_names`` gives
    each ROI Name (``label_<v>`` where missing; named labels without voxels are left out
    with a warning); ``series.algorithm_name`` the ROI Generation Description;
    ``series.description`` ("medseg structures") and ``series.number`` (301) describe
    the new series. ROI ``n`` holds the ``n``-th smallest non-zero label value present.
    Returns the written path.
    """
    sources, frames, values = label_frames(labels, series.source_files, out_path, "RTSTRUCT")
    label_names = series.label_names
    _warn_empty(label_names, values, out_path)
    names = {v: str(label_names.get(v, f"label_{v}"))[:64] for v in values}
    dataset = _structure_set(sources, series.description or "medseg structures",
                             301 if series.number is None else series.number,
                             series.algorithm_name)
    _add_rois(dataset, sources, frames, names, series.algorithm_name)
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
    except OSError as exc:
        raise ImageWriteError(f"cannot write RTSTRUCT: {exc}", out) from exc
    log.info("wrote RTSTRUCT %s: %d ROIs over %d slices", out, len(values), len(sources))
    return out


def _warn_empty(label_names: Mapping[int, str], present: Sequence[int], out) -> None:
    empty = sorted(int(v) for v in label_names if int(v) > 0 and int(v) not in present)
    if empty:
        listed = ", ".join(f"{v} ({label_names[v]})" for v in empty)
        log.warning("%s: labels %s have no voxels on the series; no ROI written for them",
                    out, listed)


def _structure_set(sources: list, description: str, number: int, algorithm: str):
    """The RTSTRUCT dataset with every module but the ROIs (Patient, Study, Series, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from medseg import __version__

    first = sources[0]
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.SeriesNumber, ds.SeriesDescription, ds.OperatorsName = number, description[:64], ""
    ds.Manufacturer, ds.ManufacturerModelName = "medseg", algorithm[:64]
    ds.SoftwareVersions = __version__
    ds.StructureSetLabel = "medseg"
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = first.FrameOfReferenceUID, ""
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(sources)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (ds.SOPClassUID,
                                                                    ds.SOPInstanceUID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _image_ref(source):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _frame_of_reference(sources: list):
    """Referenced Frame of Reference > RT Referenced Study > Series > Contour Image items."""
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(s) for s in sources]
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_SOP_CLASS
    study.ReferencedSOPInstanceUID = sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    return frame


def _add_rois(ds, sources: list, frames: np.ndarray, names: Mapping[int, str],
              algorithm: str) -> None:
    """Structure Set ROI, ROI Contour and RT ROI Observations items, one per label value."""
    from pydicom.dataset import Dataset

    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (value, name) in enumerate(names.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, sources[0].FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        roi.ROIGenerationDescription = algorithm[:64]
        ds.StructureSetROISequence.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber, contour.ROIDisplayColor = number, roi_colour(number - 1)
        contour.ContourSequence = _contours(sources, frames == value)
        ds.ROIContourSequence.append(contour)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "ORGAN", ""
        ds.RTROIObservationsSequence.append(observation)


_CONTOUR_DATA = 0x30060050


def _raw_ds(tag: int, values: np.ndarray):
    """A DS element as its encoded bytes (0.1 um steps); pydicom would build one DSfloat per
    value, which takes minutes for the ~10^6 points of a noisy prediction."""
    from pydicom.dataelem import RawDataElement

    text = "\\".join(f"{v:.4f}".rstrip("0").rstrip(".") for v in values).encode("ascii")
    text += b" " * (len(text) % 2)
    return RawDataElement(tag, "DS", len(text), text, 0, False, True)


def _contours(sources: list, masks: np.ndarray) -> list:
    """Contour items of one ROI: every outline on every slice, in LPS mm."""
    from pydicom.dataset import Dataset

    items = []
    for source, mask in zip(sources, masks):
        if not mask.any():
            continue
        origin, step_row, step_col = slice_pixel_to_lps(source)
        for outline in slice_contours(mask):
            points = origin + outline[:, :1] * step_row + outline[:, 1:] * step_col
            item = Dataset()
            item.ContourImageSequence = [_image_ref(source)]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item[_CONTOUR_DATA] = _raw_ds(_CONTOUR_DATA, points.ravel())
            items.append(item)
    return items
