"""Write a label map as a DICOM RT Structure Set (RTSTRUCT) referencing its source series.

One ROI per label value present, its ROI Number the label value (so a label
map {1, 5, 20} comes back as {1, 5, 20}: :mod:`medseg.io.dicom.derived`), named
from ``label_names`` and given a distinct display colour. Each ROI holds
CLOSED_PLANAR contours, one per connected outline on a source slice, in LPS
patient coordinates (mm); holes are inner contours, so the even-odd rule (a
point inside an odd number of the ROI's contours on a slice is inside) gives
the mask back. The structure set references the study, the series, the frame
of reference and every SOP instance (RT Referenced Series > Contour Image
Sequence), and each contour references its slice.

**Where the outlines run.** Readers rasterise contours in two ways: *centre
inside* (a pixel is in when its centre is inside the polygon: medseg,
plastimatch, 3D Slicer) and *fill polygon* (vertices rounded to pixel
centres, then the polygon filled with its edges, as ``cv2.fillPoly`` does:
rt-utils and so TotalSegmentator). An outline midway between inside and
outside pixel centres (marching squares at level 0.5) suits the first but
grows by one ring in the second. medseg's outlines run
:data:`OUTLINE_OFFSET_PX` of a pixel outside the centres of the structure's
boundary pixels: scikit-image's ``measure.find_contours`` at level
``1 - OUTLINE_OFFSET_PX`` on the zero-padded binary slice, with 8-connected
foreground (``fully_connected="high"``), as OpenCV traces. Every inside centre
is then strictly inside (at least ``OUTLINE_OFFSET_PX / sqrt(2)`` pixel from the
outline), every outside centre at least half a pixel outside, and rounding the
vertices puts them on the boundary pixels' centres: both kinds of readers give
the very same pixels back. A one-pixel-thin structure becomes a loop of
width ``2 * OUTLINE_OFFSET_PX`` around its centres, which a fill-polygon reader
rasterises as the line of its pixels; a hole's outline hugs the foreground
pixels around it the same way. Collinear points along straight runs are
dropped, which keeps the outline exactly.

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
from medseg.io.dicom.derived import DerivedSeries, label_frames
from medseg.io.dicom.geometry import slice_pixel_to_lps
from medseg.volume import Volume

__all__ = ["write_rtstruct", "slice_contours", "roi_colour", "RTSTRUCT_SOP_CLASS",
           "OUTLINE_OFFSET_PX"]

log = logging.getLogger(__name__)

#: RT Structure Set Storage.
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # (retired) Detached Study Management, per A.19
#: How far outlines run outside the centres of a structure's boundary pixels (pixels).
OUTLINE_OFFSET_PX = 0.1
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
    One (n, 2) float array per outline (outer boundaries and holes), the closing
    point not repeated. Each runs :data:`OUTLINE_OFFSET_PX` pixel outside the centres
    of the boundary pixels it surrounds (see the module notes): inside centres lie
    strictly inside, outside centres at least half a pixel outside, and the vertices
    round to boundary pixel centres.
    """
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)
    outlines = measure.find_contours(padded, 1.0 - OUTLINE_OFFSET_PX, fully_connected="high")
    # closed: the first point is repeated last; the padding shifts indices by one
    return [_drop_collinear(contour[:-1] - 1.0) for contour in outlines if len(contour) > 3]


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """The corners of a closed outline: points where the direction changes (same outline)."""
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    straight = (np.abs(cross) < 1e-9) & ((incoming * outgoing).sum(axis=1) > 0)
    return points[~straight]


def write_rtstruct(labels: Volume, out_path: str | os.PathLike, series: DerivedSeries) -> Path:
    """Write ``labels`` as an RT Structure Set referencing the source series.

    ``labels``, ``out_path`` and ``series`` (:class:`~medseg.io.dicom.derived.DerivedSeries`)
    are as for :func:`medseg.io.dicom.seg.write_dicom_seg` (a label map on the series'
    grid, a ``.dcm`` written atomically, the source slice files and names), and so are the
    errors (GeometryError off the grid; DataError without foreground, for a non-integer
    map or a slice without geometry/UIDs; ImageWriteError). ``series.label_names`` gives
    each ROI Name (``label_<v>`` where missing; named labels without voxels are left out
    with a warning); ``series.algorithm_name`` the ROI Generation Description;
    ``series.description`` ("medseg structures") and ``series.number`` (301) describe
    the new series. ROI Number ``v`` holds label value ``v``. Returns the written path.
    """
    sources, frames, values = label_frames(labels, series.source_files, out_path, "RTSTRUCT")
    label_names = series.label_names
    _warn_empty(label_names, values, out_path)
    names = {v: str(label_names.get(v, f"label_{v}"))[:64] for v in values}
    dataset = _structure_set(sources, series.description or "medseg structures",
                             301 if series.number is None else series.number,
                             series.algorithm_name, series.series_uid, series.instance_uid)
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


def _structure_set(sources: list, description: str, number: int, algorithm: str,
                   series_uid: str | None = None, instance_uid: str | None = None):
    """The RTSTRUCT dataset with every module but the ROIs (Patient, Study, Series, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    from medseg import __version__

    first = sources[0]
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, instance_uid or generate_uid()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", series_uid or generate_uid()
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
    """Structure Set ROI, ROI Contour and RT ROI Observations items, one per label value
    (``names``: value -> ROI Name, ascending), numbered by the value."""
    from pydicom.dataset import Dataset

    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for index, (number, name) in enumerate(names.items()):  # ROI Number = label value
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, sources[0].FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = name, "AUTOMATIC"
        roi.ROIGenerationDescription = algorithm[:64]
        ds.StructureSetROISequence.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber, contour.ROIDisplayColor = number, roi_colour(index)
        contour.ContourSequence = _contours(sources, frames == number)
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
