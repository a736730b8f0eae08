"""Write a label map as a DICOM Segmentation (DICOM-SEG) referencing its source CT/MR series.

The label :class:`~medseg.volume.Volume` is indexed (x, y, z) with a voxel ->
RAS+ mm affine; a DICOM-SEG stores one frame per source slice, each frame
indexed (row, column) exactly like that slice's pixels, placed in LPS patient
space by the slice's Image Position / Orientation (Patient). The conversion
never assumes an axis order: for every source slice it computes, from the
DICOM geometry and the label affine, the label voxel under that slice's pixel
(0, 0) and the voxel steps for one row down and one column right, checks that
they are whole voxels along grid axes, and gathers the frame from there. A
label map whose grid is not the series' grid is refused with GeometryError.

Segments are BINARY, one per label value present (label 0 is background),
numbered 1..n in increasing label value, with the label name as Segment Label
and algorithm type AUTOMATIC. The file is written atomically through
``highdicom.seg.Segmentation``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import DataError, GeometryError, ImageReadError, ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.volume import Volume

__all__ = [
    "DerivedSeries",
    "write_dicom_seg", "frames_for_sources", "frame_indices", "frame_steps", "label_frames",
    "slice_pixel_to_lps", "read_sources",
]

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_GRID_TOL_VOXELS = 0.05  # how far (in voxels) a slice pixel may sit from a label voxel centre


def slice_pixel_to_lps(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometry of one DICOM slice: LPS mm of pixel (0, 0) and the LPS mm steps per row / column.

    DICOM PS3.3 C.7.6.2.1.1: ``P(r, c) = IPP + c * PixelSpacing[1] * IOP[:3]
    + r * PixelSpacing[0] * IOP[3:]`` (IOP[:3] is the direction along a row, in
    which the column index grows).

    Returns
    -------
    origin_lps : (3,) mm of pixel (row 0, col 0).
    step_row_lps : (3,) mm per row (r + 1).
    step_col_lps : (3,) mm per column (c + 1).
    """
    iop = np.asarray([float(v) for v in dataset.ImageOrientationPatient], dtype=np.float64)
    spacing = [float(v) for v in dataset.PixelSpacing]
    origin = np.asarray([float(v) for v in dataset.ImagePositionPatient], dtype=np.float64)
    return origin, iop[3:] * spacing[0], iop[:3] * spacing[1]


def _lps_to_voxel(affine: np.ndarray, points_lps: np.ndarray, vectors: bool = False) -> np.ndarray:
    """Label voxel coordinates (x, y, z) of LPS mm points (or of displacement vectors)."""
    inverse = np.linalg.inv(affine)
    ras = np.asarray(points_lps, dtype=np.float64) @ _LPS_TO_RAS.T
    out = ras @ inverse[:3, :3].T
    return out if vectors else out + inverse[:3, 3]


def _unit_step(step: np.ndarray, what: str, path: str) -> np.ndarray:
    """Check that a voxel-space step is +-1 along exactly one axis; return it as int."""
    rounded = np.rint(step)
    if np.abs(step - rounded).max() > _GRID_TOL_VOXELS or np.abs(rounded).sum() != 1:
        raise GeometryError(
            f"one {what} of the DICOM slice moves by {np.round(step, 3).tolist()} label voxels, "
            "expected one voxel along one axis: the label map is not on the series' grid "
            "(predict on the DICOM series itself)",
            path,
        )
    return rounded.astype(np.int64)


def frame_steps(labels: Volume, dataset, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where one image plane lies in ``labels``: voxel of pixel (0, 0), voxel step per row and
    per column (each +-1 along one axis), all (3,) int in (x, y, z).

    ``dataset`` is anything with the tags of one image plane (Rows, Columns,
    PixelSpacing, Image Position / Orientation (Patient)): a source slice, or a
    DICOM-SEG frame's plane. GeometryError if the plane is not on the grid of
    ``labels`` or reaches outside it.
    """
    rows, cols = int(dataset.Rows), int(dataset.Columns)
    origin, step_row, step_col = slice_pixel_to_lps(dataset)
    start = _lps_to_voxel(labels.affine, origin)
    start_int = np.rint(start)
    if np.abs(start - start_int).max() > _GRID_TOL_VOXELS:
        raise GeometryError(
            f"slice origin falls at label voxel {np.round(start, 3).tolist()}, between voxel "
            "centres: the label map is not on the series' grid",
            path,
        )
    d_row = _unit_step(_lps_to_voxel(labels.affine, step_row, vectors=True), "row", path)
    d_col = _unit_step(_lps_to_voxel(labels.affine, step_col, vectors=True), "column", path)
    first = start_int.astype(np.int64)
    corners = np.stack([first + r * d_row + c * d_col
                        for r in (0, rows - 1) for c in (0, cols - 1)])
    shape = np.asarray(labels.spatial_shape)
    if (corners < 0).any() or (corners >= shape).any():
        raise GeometryError(
            f"slice of {rows}x{cols} pixels reaches label voxels {corners.tolist()} outside the "
            f"label grid of shape {tuple(shape)}",
            path,
        )
    return first, d_row, d_col


def frame_indices(labels: Volume, dataset, path: str) -> tuple[np.ndarray, ...]:
    """(rows, cols) index arrays into ``labels.array`` (x, y, z) for one image plane
    (see :func:`frame_steps`)."""
    first, d_row, d_col = frame_steps(labels, dataset, path)
    r = np.arange(int(dataset.Rows))[:, None, None]
    c = np.arange(int(dataset.Columns))[None, :, None]
    index = first[None, None, :] + r * d_row + c * d_col  # (rows, cols, 3)
    return index[..., 0], index[..., 1], index[..., 2]


def frames_for_sources(
    labels: Volume, sources: Sequence, paths: Sequence[str] | None = None
) -> np.ndarray:
    """Label frames aligned with the source slices.

    Parameters
    ----------
    labels : integer label Volume (x, y, z), RAS affine, on the series' grid.
    sources : pydicom datasets of the single-frame source slices (any order).
    paths : their file names, for error messages.

    Returns
    -------
    (n_slices, rows, cols) array with ``labels.array.dtype``; frame ``i`` is
    indexed exactly like the pixels of ``sources[i]``.
    """
    if labels.has_channels:
        raise GeometryError(f"a label map is (x, y, z), got shape {labels.shape}")
    names = list(paths) if paths is not None else [""] * len(sources)
    frames = [labels.array[frame_indices(labels, ds, name)] for ds, name in zip(sources, names)]
    return np.stack(frames)


def label_frames(labels: Volume, source_files: Sequence[str | os.PathLike],
                 out_path: str | os.PathLike, what: str) -> tuple[list, np.ndarray, list[int]]:
    """What a derived object (``what``: DICOM-SEG, RTSTRUCT) of ``labels`` is made of.

    Returns the source slice headers (:func:`read_sources`), the label frames
    aligned with them (:func:`frames_for_sources`) and the non-zero label values
    present, ascending. DataError naming ``out_path`` for a non-integer map or one
    without foreground.
    """
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"label map must hold integers, got dtype {array.dtype}", out_path)
    sources, paths = read_sources(source_files, what)
    frames = frames_for_sources(labels, sources, paths)
    values = [int(v) for v in np.unique(frames) if v > 0]
    if not values:
        raise DataError(f"the prediction has no foreground label: a {what} needs at least one "
                        "labelled voxel", out_path)
    return sources, frames, values


def _derived_uid(kind: str, seeds: Sequence[str]) -> str:
    """A deterministic UID for an anonymised series whose UID was blanked."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[kind, *seeds]))


def _fill_missing_uids(sources: list, paths: Sequence[str], what: str) -> None:
    """Give anonymised sources (blank UIDs) the UIDs highdicom needs, in memory only.

    SOP Class / Instance UIDs come from each file's meta header; blank Study /
    Series / Frame of Reference UIDs get one deterministic derived UID for the
    whole series (logged as a warning: the SEG then references that UID).
    """
    instance_uids = []
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "")) and meta is not None:
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")
        if not str(ds.get("SOPInstanceUID", "")) and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
        instance_uids.append(str(ds.get("SOPInstanceUID", "")))
    for i, ds in enumerate(sources):
        if not str(ds.get("SOPClassUID", "")) or not instance_uids[i]:
            raise DataError("DICOM slice has no SOP Class / SOP Instance UID", paths[i])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(ds.get(keyword, "")) for ds in sources}
        if values == {""}:
            uid = _derived_uid(keyword, sorted(instance_uids))
            log.warning("%s: source series has a blank %s (anonymised?); the %s "
                        "references the derived UID %s", Path(paths[0]).parent, keyword, what, uid)
            for ds in sources:
                setattr(ds, keyword, uid)


def read_sources(source_files: Sequence[str | os.PathLike], what: str = "DICOM-SEG"
                 ) -> tuple[list, list[str]]:
    """Headers (pixels skipped) of the source slices a derived object (``what``) references.

    Blank UIDs are filled in memory (:func:`_fill_missing_uids`); returns the
    datasets and their paths. ImageReadError / DataError name the bad file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    paths = [os.fspath(p) for p in source_files]
    if not paths:
        raise DataError(f"no source DICOM files given for the {what}")
    sources = []
    for path in paths:
        try:
            sources.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, OSError) as exc:
            raise ImageReadError(f"cannot read DICOM source slice: {exc}", path) from exc
        geometry_tags = ("ImagePositionPatient", "ImageOrientationPatient")
        if any(tag not in sources[-1] for tag in geometry_tags):
            raise DataError("DICOM slice lacks Image Position/Orientation (Patient)", path)
    _fill_missing_uids(sources, paths, what)
    return sources, paths


def _segment_descriptions(values: Sequence[int], label_names: Mapping[int, str],
                          algorithm_name: str, algorithm_version: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    names = {int(k): str(v) for k, v in label_names.items()}
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=names.get(value, f"label_{value}")[:64],
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=names.get(value, f"label_{value}")[:64],
            tracking_uid=hd.UID(),
        )
        for number, value in enumerate(values, start=1)
    ]


@dataclass(frozen=True)
class DerivedSeries:
    """What a DICOM labels object (DICOM-SEG or RTSTRUCT) refers to and says about itself.

    Attributes
    ----------
    source_files : the referenced series' single-frame slice files (any order).
    label_names : label value -> name (Segment Label / ROI Name); missing names become
        ``label_<v>``.
    algorithm_name, algorithm_version : the algorithm the object names (version:
        medseg's by default).
    description, number : Series Description and Series Number of the new series
        (None: each writer's default).
    """

    source_files: Sequence[str | os.PathLike]
    label_names: Mapping[int, str]
    algorithm_name: str = "medseg"
    algorithm_version: str | None = None
    description: str | None = None
    number: int | None = None


def write_dicom_seg(labels: Volume, out_path: str | os.PathLike, series: DerivedSeries) -> Path:
    """Write ``labels`` as a BINARY DICOM-SEG referencing the source series.

    Parameters
    ----------
    labels : integer label map, Volume (x, y, z) with RAS+ mm affine, on the grid
        of the DICOM series (as returned by ``predict`` on ``read_volume(folder)``).
    out_path : destination ``.dcm``; written atomically.
    series : :class:`DerivedSeries`: the source slice files, the label names (Segment
        Label), the algorithm (Algorithm Identification of every segment) and the new
        series' description ("medseg segmentation") and number (300).

    Returns
    -------
    The written path. Segment ``n`` holds the ``n``-th smallest non-zero label value present.

    Raises
    ------
    GeometryError if the label grid is not the series' grid; DataError if the map
    has no foreground or a slice lacks geometry/UIDs; ImageWriteError if the file
    cannot be written.
    """
    from medseg import __version__

    sources, frames, values = label_frames(labels, series.source_files, out_path, "DICOM-SEG")
    lut = np.zeros(int(frames.max()) + 1, dtype=np.uint16 if len(values) > 255 else np.uint8)
    lut[values] = np.arange(1, len(values) + 1)
    with _quiet("highdicom"):
        seg = _build_segmentation(sources, lut[frames], values, series.label_names,
                                  series.algorithm_name, series.algorithm_version or __version__,
                                  series.description or "medseg segmentation",
                                  300 if series.number is None else series.number)
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            seg.save_as(tmp)
    except OSError as exc:
        raise ImageWriteError(f"cannot write DICOM-SEG: {exc}", out) from exc
    log.info("wrote DICOM-SEG %s: %d segments over %d frames", out, len(values), len(sources))
    return out


def _build_segmentation(sources, pixel_array, values, label_names, algorithm_name,
                        algorithm_version, series_description, series_number):
    import highdicom as hd

    from medseg import __version__

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(
            values, label_names, algorithm_name, algorithm_version
        ),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=algorithm_name,
        software_versions=__version__,
        device_serial_number="0",
        series_description=series_description,
    )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a chatty library logger below WARNING for the duration."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
