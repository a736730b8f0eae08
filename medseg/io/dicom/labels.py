"""DICOM-SEG and RTSTRUCT objects as label maps on the grid of the series they were drawn on.

:func:`read_dicom_labels` reads either kind with pydicom and places it on the
*reference* series, the Volume :func:`medseg.io.read_volume` gives for its
folder (same shape, same affine), through
:func:`medseg.io.dicom.geometry.frame_steps`, the one mapping from an image
plane (Image Position / Orientation (Patient), Pixel Spacing) to voxels:

* **DICOM-SEG** (BINARY, FRACTIONAL or LABELMAP): each frame is placed by its
  own Plane Position (and the shared or per-frame Plane Orientation), so the
  frame order and the source-image references do not matter; a frame that is
  not on a reference slice is an error. FRACTIONAL frames count as inside from
  half the Maximum Fractional Value. Segments are read in Segment Number order;
  a segment's label value is the one medseg stored with it
  (:func:`medseg.io.dicom.derived.label_value`), else its Segment Number.
* **RTSTRUCT**: each CLOSED_PLANAR contour goes to the reference slice whose
  position along the slice normal it lies on (within a quarter of the slice
  gap), is converted from LPS mm to (row, column) of that slice and rasterised
  at pixel centres (scikit-image ``draw.polygon``); the contours of one ROI on
  one slice combine by the even-odd rule (XOR: a pixel inside an odd number of
  contours is inside). ROIs are read in Structure Set ROI Sequence order; an ROI's
  label value is its ROI Number (its position in the list where the ROI Numbers
  are not distinct values in 1..65535).

:meth:`Reference.check` compares the object with the reference: referenced
image instances missing from the reference, or another frame of reference
(when the object references no instances), are one-line errors naming both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import DataError, GeometryError, ImageReadError, UsageError
from medseg.io.dicom.derived import label_value
from medseg.io.dicom.files import read_dataset
from medseg.io.dicom.geometry import frame_steps, read_sources, slice_pixel_to_lps
from medseg.volume import LabelMap, Volume

__all__ = ["SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "OVERLAP_POLICIES", "dicom_label_kind",
           "read_dicom_labels", "merge_masks", "Reference", "seg_masks", "rtstruct_masks",
           "segment_values", "roi_values", "LabelEntry", "summarise"]

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_KINDS = {SEG_SOP_CLASS: "seg", RTSTRUCT_SOP_CLASS: "rtstruct"}
#: A contour lies on a slice when its distance along the normal is below this fraction of the gap.
_SLICE_TOL = 0.25
#: A mask: (label value, name, (x, y, z) bool array on the reference grid).
Mask = tuple[int, str, np.ndarray]
#: What :func:`read_dicom_labels` does where segments / ROIs overlap: refuse, or keep the
#: first (earlier segment / ROI) or the last one.
OVERLAP_POLICIES = ("error", "first", "last")
_WHAT = {"seg": "segments", "rtstruct": "ROIs"}
_MAX_VALUE = 65535


def dicom_label_kind(path: str | os.PathLike) -> str | None:
    """``"seg"`` for a DICOM-SEG file, ``"rtstruct"`` for an RT Structure Set, else None.

    Only the header is read; folders, image-extension files and non-DICOM files are None.
    """
    from medseg.io.formats import extension_of

    if not Path(path).is_file() or extension_of(path) is not None:
        return None
    try:
        header = read_dataset(path, pixels=False, tags=["SOPClassUID"])
    except ImageReadError:
        return None
    meta = getattr(header, "file_meta", None) or {}
    sop = str(header.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", ""))
    return _KINDS.get(sop)


def read_dicom_labels(path: str | os.PathLike, reference: str | os.PathLike,
                      overlap: str = "error") -> LabelMap:
    """A DICOM-SEG or RTSTRUCT file as a label map on the grid of its reference series.

    Parameters
    ----------
    path : the SEG / RTSTRUCT file (:func:`dicom_label_kind` tells which).
    reference : the DICOM series folder it was drawn on.
    overlap : where segments / ROIs overlap: ``"error"``, ``"first"`` or ``"last"``
        (:func:`merge_masks`).

    Returns
    -------
    LabelMap (x, y, z) with the reference's shape and RAS+ mm affine; label values as the
    module notes say; ``meta["label_names"]`` value -> Segment Label / ROI Name,
    ``meta["format"]`` ``"seg"`` or ``"rtstruct"``.

    Raises
    ------
    ImageReadError : ``path`` is no SEG / RTSTRUCT pydicom can read.
    UsageError : ``reference`` is not a DICOM series.
    DataError : overlaps with ``overlap="error"``; a reference that does not match.
    """
    kind = dicom_label_kind(path)
    if kind is None:
        raise ImageReadError("is neither a DICOM-SEG nor an RTSTRUCT", path)
    ref = Reference.load(reference)
    dataset = read_dataset(path, "DICOM-SEG" if kind == "seg" else "RTSTRUCT")
    reader = seg_masks if kind == "seg" else rtstruct_masks
    array, names = merge_masks(reader(dataset, ref, path), ref.volume.spatial_shape, overlap,
                               path, _WHAT[kind])
    meta = {"source": os.fspath(path), "format": kind, "label_names": names,
            "reference": os.fspath(reference), "series_uid": ref.volume.meta.get("series_uid")}
    return LabelMap(array, ref.volume.affine, meta)


def merge_masks(
    masks: Iterable[Mask],
    shape: Sequence[int],
    overlap: str,
    path: str | os.PathLike,
    what: str = "segments",
) -> tuple[np.ndarray, dict[int, str]]:
    """One label map from ``(value, name, mask)`` triples, in their order.

    Parameters
    ----------
    masks : label value (> 0), name and (x, y, z) bool mask of each segment / ROI.
    shape : (x, y, z) voxels of the result.
    overlap : ``"error"``, ``"first"`` (earlier masks win) or ``"last"`` (later masks win).
    path, what : the file and what its masks are called, for the overlap error.

    Returns
    -------
    (x, y, z) integer array (:func:`medseg.argmax.label_dtype`) and value -> name.
    """
    from medseg.argmax import label_dtype

    labels = np.zeros(tuple(shape), dtype=np.uint16)
    names: dict[int, str] = {}
    for value, name, mask in masks:
        taken = mask & (labels != 0)
        if taken.any() and overlap == "error":
            other = int(np.bincount(labels[taken]).argmax())
            raise DataError(f"{what} {names[other]!r} ({other}) and {name!r} ({value}) overlap in "
                            f"{int(taken.sum())} voxels: a label map holds one label per voxel, "
                            "choose which wins with --overlap first|last (overlap= in Python)",
                            path)
        labels[mask & ~taken if overlap == "first" else mask] = value
        names[value] = name
    top = max(names, default=0)
    return labels.astype(label_dtype(top + 1), copy=False), names


@dataclass(frozen=True)
class Reference:
    """The image series a SEG / RTSTRUCT is read onto: its Volume and its slice headers.

    ``slices[k]`` is the header of z index ``k`` of ``volume`` (``meta["dicom_files"]``).
    """

    path: str
    volume: Volume
    slices: tuple
    paths: tuple[str, ...]

    @classmethod
    def load(cls, reference: str | os.PathLike) -> Reference:
        """Read the series ``reference`` (a DICOM folder) and its slice headers."""
        from medseg.io import read_volume

        volume = read_volume(reference, channels=False)
        files = volume.meta.get("dicom_files")
        if not files:
            raise UsageError("a reference for DICOM-SEG / RTSTRUCT labels must be the DICOM "
                             "image series they were drawn on (a folder)", reference)
        slices, paths = read_sources(files, "label reference")
        return cls(os.fspath(reference), volume, tuple(slices), tuple(paths))

    def check(self, dataset, path: str | os.PathLike, referenced: set[str]) -> None:
        """Refuse ``dataset`` (read from ``path``) if it was not drawn on this series.

        ``referenced``: the SOP Instance UIDs the object references. Missing ones are an
        error; another Frame of Reference is an error unless every referenced instance is
        here (then a warning: some writers, rt-utils among them, write a fresh UID).
        """
        have = {str(s.SOPInstanceUID) for s in self.slices}
        missing = sorted(referenced - have)
        if missing:
            raise DataError(f"references {len(missing)} image(s) that are not in the reference "
                            f"series {self.path} (e.g. SOP Instance UID {missing[0]}): give the "
                            "series it was drawn on", path)
        ours = str(self.slices[0].get("FrameOfReferenceUID", ""))
        theirs = _frames_of_reference(dataset) - {""}
        if theirs and ours not in theirs:
            if not referenced:
                raise DataError(f"frame of reference {sorted(theirs)[0]} differs from that of the "
                                f"reference series {self.path} ({ours}): give the series it was "
                                "drawn on", path)
            log.warning("%s: frame of reference %s differs from %s of %s, but every referenced "
                        "image is there; reading it onto them", path, sorted(theirs)[0], ours,
                        self.path)

    def place(self, frame: np.ndarray, plane, where: str, mask: np.ndarray, path) -> None:
        """OR a (rows, cols) ``frame`` on image plane ``plane`` into the (x, y, z) ``mask``."""
        try:
            first, d_row, d_col = frame_steps(self.volume, plane, os.fspath(path))
        except GeometryError as exc:
            raise DataError(f"{where} is not on the grid of the reference series {self.path}: "
                            f"{exc.message}", path) from exc
        view = _plane_view(mask, first, d_row, d_col, frame.shape)
        view |= frame


def _plane_view(mask: np.ndarray, first: np.ndarray, d_row: np.ndarray, d_col: np.ndarray,
                shape: tuple[int, int]) -> np.ndarray:
    """The (rows, cols) view of ``mask`` (x, y, z) under an image plane (:func:`frame_steps`)."""
    index: list = [int(first[0]), int(first[1]), int(first[2])]
    axes = []
    for step, n in zip((d_row, d_col), shape):
        axis = int(np.flatnonzero(step)[0])
        sign, start = int(step[axis]), int(first[axis])
        stop = start + sign * n
        index[axis] = slice(start, stop if stop >= 0 else None, sign)
        axes.append(axis)
    view = mask[tuple(index)]
    return view if axes[0] < axes[1] else view.T


def _frames_of_reference(dataset) -> set[str]:
    uids = {str(dataset.get("FrameOfReferenceUID", ""))}
    for item in dataset.get("ReferencedFrameOfReferenceSequence", []):
        uids.add(str(item.get("FrameOfReferenceUID", "")))
    return uids


# -- DICOM-SEG ----------------------------------------------------------------------------------
def _seg_instances(dataset) -> set[str]:
    return {str(inst.ReferencedSOPInstanceUID)
            for series in dataset.get("ReferencedSeriesSequence", [])
            for inst in series.get("ReferencedInstanceSequence", [])}


def _frame_item(dataset, i: int, keyword: str):
    """Item ``keyword`` of frame ``i``'s functional groups (per-frame first, then shared)."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    for group in ([per_frame[i]] if i < len(per_frame) else []) + list(shared)[:1]:
        if keyword in group:
            return group[keyword][0]
    return None


def _seg_plane(dataset, i: int, path):
    """Frame ``i`` of a SEG as one image plane (the tags :func:`frame_indices` reads)."""
    from pydicom.dataset import Dataset

    position = _frame_item(dataset, i, "PlanePositionSequence")
    orientation = _frame_item(dataset, i, "PlaneOrientationSequence")
    measures = _frame_item(dataset, i, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise DataError(f"DICOM-SEG frame {i + 1} lacks its plane position, orientation or "
                        "pixel spacing: cannot place it", path)
    plane = Dataset()
    plane.ImagePositionPatient = position.ImagePositionPatient
    plane.ImageOrientationPatient = orientation.ImageOrientationPatient
    plane.PixelSpacing = measures.PixelSpacing
    plane.Rows, plane.Columns = dataset.Rows, dataset.Columns
    return plane


def _seg_frames(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Pixel frames (n, rows, cols) and each frame's segment number (0 for LABELMAP frames)."""
    pixels = dataset.pixel_array
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    numbers = np.zeros(len(pixels), dtype=np.int64)
    if str(dataset.SegmentationType) != "LABELMAP":
        for i in range(len(pixels)):
            ident = _frame_item(dataset, i, "SegmentIdentificationSequence")
            numbers[i] = int(ident.ReferencedSegmentNumber) if ident is not None else 0
    return pixels, numbers


def _distinct_values(values: Sequence[int | None]) -> bool:
    """True when ``values`` are distinct label values in 1..65535 (none missing)."""
    valid = [v for v in values if v is not None and 0 < v <= _MAX_VALUE]
    return len(valid) == len(values) and len(set(valid)) == len(valid)


def segment_values(dataset) -> dict[int, int]:
    """Segment Number -> label value of a DICOM-SEG's segments (background 0 left out).

    The values medseg stored with the segments where every segment has a distinct one,
    else the Segment Numbers.
    """
    segments = [s for s in dataset.get("SegmentSequence", []) if int(s.SegmentNumber) > 0]
    numbers = [int(s.SegmentNumber) for s in segments]
    stored = [label_value(s) for s in segments]
    return dict(zip(numbers, stored if _distinct_values(stored) else numbers))


def roi_values(dataset, path: str | os.PathLike | None = None) -> list[int]:
    """The label value of each ROI of an RTSTRUCT, in Structure Set ROI Sequence order: its
    ROI Number, or its position (1, 2, ...) where the ROI Numbers are not distinct values
    in 1..65535 (a warning names ``path``)."""
    rois = dataset.get("StructureSetROISequence", [])
    numbers = [_int_or_none(roi.get("ROINumber")) for roi in rois]
    if _distinct_values(numbers):
        return [int(n) for n in numbers]
    log.warning("%s: ROI Numbers %s are not distinct values in 1..%d; ROIs get label values "
                "1..%d in their order", path, numbers[:5], _MAX_VALUE, len(rois))
    return list(range(1, len(rois) + 1))


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def seg_masks(dataset, reference: Reference, path: str | os.PathLike) -> Iterator[Mask]:
    """One mask per segment of a DICOM-SEG on the reference, in Segment Number order
    (label values: :func:`segment_values`)."""
    reference.check(dataset, path, _seg_instances(dataset))
    values = segment_values(dataset)
    pixels, numbers = _seg_frames(dataset)
    kind = str(dataset.SegmentationType)
    threshold = 0.5 * float(dataset.get("MaximumFractionalValue", 1)) if kind == "FRACTIONAL" \
        else 0.5
    planes = [_seg_plane(dataset, i, path) for i in range(len(pixels))]
    for segment in sorted(dataset.SegmentSequence, key=lambda s: int(s.SegmentNumber)):
        number = int(segment.SegmentNumber)
        if number == 0:  # the background of a LABELMAP SEG
            continue
        mask = np.zeros(reference.volume.spatial_shape, dtype=bool)
        frames = range(len(pixels)) if kind == "LABELMAP" else np.flatnonzero(numbers == number)
        for i in frames:
            inside = pixels[i] == number if kind == "LABELMAP" else pixels[i] >= threshold
            if inside.any():
                reference.place(inside, planes[i], f"frame {i + 1}", mask, path)
        yield values[number], str(segment.get("SegmentLabel", f"segment_{number}")), mask


# -- RTSTRUCT -----------------------------------------------------------------------------------
def _rt_instances(dataset) -> set[str]:
    """The images an RTSTRUCT references: its Contour Image Sequence under the referenced
    series, else (where that is missing) the images its contours name."""
    uids = {str(i.ReferencedSOPInstanceUID)
            for frame in dataset.get("ReferencedFrameOfReferenceSequence", [])
            for study in frame.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])
            for i in series.get("ContourImageSequence", [])}
    if uids:
        return uids
    return {str(i.ReferencedSOPInstanceUID)
            for roi in dataset.get("ROIContourSequence", [])
            for contour in roi.get("ContourSequence", [])
            for i in contour.get("ContourImageSequence", [])}


def _contour_points(item) -> np.ndarray:
    """(n, 3) LPS mm of a contour, parsed from the raw DS bytes where pydicom has not yet
    (one DSfloat per value would take minutes on a noisy structure set)."""
    element = item.get_item(0x30060050)
    if element is None:
        return np.zeros((0, 3))
    value = element.value
    if isinstance(value, bytes):
        text = value.decode("ascii").strip(" \x00")
        return np.array(text.split("\\") if text else [], dtype=np.float64).reshape(-1, 3)
    return np.asarray(value, dtype=np.float64).reshape(-1, 3)


def _polygon(points_lps: np.ndarray, plane) -> np.ndarray:
    """(rows, cols) bool: pixel centres inside the polygon ``points_lps`` (n, 3) on ``plane``."""
    from skimage.draw import polygon

    origin, step_row, step_col = slice_pixel_to_lps(plane)
    offset = points_lps - origin
    rows = offset @ step_row / (step_row @ step_row)
    cols = offset @ step_col / (step_col @ step_col)
    frame = np.zeros((int(plane.Rows), int(plane.Columns)), dtype=bool)
    rr, cc = polygon(rows, cols, shape=frame.shape)
    frame[rr, cc] = True
    return frame


class _Slices:
    """Finds the reference slice a planar contour lies on, by position along the normal."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        _, step_row, step_col = slice_pixel_to_lps(reference.slices[0])
        normal = np.cross(step_col, step_row)
        self.normal = normal / np.linalg.norm(normal)
        self.along = np.array([slice_pixel_to_lps(s)[0] @ self.normal for s in reference.slices])
        gaps = np.abs(np.diff(self.along))
        self.tolerance = _SLICE_TOL * float(np.median(gaps)) if gaps.size else 0.5

    def index(self, points: np.ndarray, roi: str, path) -> int:
        position = float(np.mean(points @ self.normal))
        distance = np.abs(self.along - position)
        k = int(np.argmin(distance))
        if distance[k] > self.tolerance:
            raise DataError(f"a contour of ROI {roi!r} lies at {position:.4g} mm along the slice "
                            f"normal, on no slice of the reference series {self.reference.path} "
                            f"(slices from {self.along.min():.4g} to {self.along.max():.4g} mm)",
                            path)
        return k


def rtstruct_masks(dataset, reference: Reference, path: str | os.PathLike) -> Iterator[Mask]:
    """One mask per ROI of an RTSTRUCT on the reference, in ROI list order (label values:
    :func:`roi_values`, the ROI Numbers).

    Only CLOSED_PLANAR contours enclose an area; POINT and OPEN contours are skipped.
    """
    reference.check(dataset, path, _rt_instances(dataset))
    slices = _Slices(reference)
    contours = {int(c.ReferencedROINumber): c.get("ContourSequence", [])
                for c in dataset.get("ROIContourSequence", [])}
    rois = dataset.get("StructureSetROISequence", [])
    for value, roi in zip(roi_values(dataset, path), rois):
        name = str(roi.get("ROIName", f"roi_{roi.ROINumber}"))
        frames: dict[int, np.ndarray] = {}
        for item in contours.get(int(roi.ROINumber), []):
            if str(item.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            points = _contour_points(item)
            if len(points) < 3:
                continue
            k = slices.index(points, name, path)
            inside = _polygon(points, reference.slices[k])
            frames[k] = frames[k] ^ inside if k in frames else inside
        mask = np.zeros(reference.volume.spatial_shape, dtype=bool)
        for k, frame in frames.items():
            reference.place(frame, reference.slices[k], f"ROI {name!r}", mask, path)
        yield value, name, mask


# -- summary (medseg info) ----------------------------------------------------------------------
@dataclass(frozen=True)
class LabelEntry:
    """One segment / ROI: the label value read_labels gives it, its name, and its size.

    ``count`` is the number of foreground pixels over all frames (SEG) or of
    contours (RTSTRUCT).
    """

    label: int
    name: str
    count: int


def summarise(dataset, kind: str) -> tuple[list[LabelEntry], list[str]]:
    """The segments / ROIs of a SEG (``kind="seg"``) or RTSTRUCT, and the series UIDs it references.

    Needs no reference series: nothing is placed on a grid.
    """
    if kind == "seg":
        pixels, numbers = _seg_frames(dataset)
        labelmap = str(dataset.SegmentationType) == "LABELMAP"
        values = segment_values(dataset)
        entries = [LabelEntry(values[int(s.SegmentNumber)], str(s.get("SegmentLabel", "")), int(
            np.count_nonzero(pixels == int(s.SegmentNumber)) if labelmap
            else np.count_nonzero(pixels[numbers == int(s.SegmentNumber)])))
            for s in dataset.SegmentSequence if int(s.SegmentNumber) > 0]
        series = [str(s.SeriesInstanceUID) for s in dataset.get("ReferencedSeriesSequence", [])]
        return entries, series
    contours = {int(c.ReferencedROINumber): len(c.get("ContourSequence", []))
                for c in dataset.get("ROIContourSequence", [])}
    rois = dataset.get("StructureSetROISequence", [])
    entries = [LabelEntry(value, str(roi.get("ROIName", "")), contours.get(int(roi.ROINumber), 0))
               for value, roi in zip(roi_values(dataset), rois)]
    series = [str(s.SeriesInstanceUID)
              for f in dataset.get("ReferencedFrameOfReferenceSequence", [])
              for st in f.get("RTReferencedStudySequence", [])
              for s in st.get("RTReferencedSeriesSequence", [])]
    return entries, series
