"""Write a label map as a DICOM Segmentation (DICOM-SEG) referencing its source CT/MR series.

The label :class:`~medseg.volume.Volume` is indexed (x, y, z) with a voxel ->
RAS+ mm affine; a DICOM-SEG stores one frame per source slice, each frame
indexed (row, column) exactly like that slice's pixels, placed in LPS patient
space by the slice's Image Position / Orientation (Patient). The frames are
gathered through :mod:`medseg.io.dicom.geometry`, which never assumes an axis
order; a label map whose grid is not the series' grid is refused with
GeometryError.

Segments are BINARY, one per label value present (label 0 is background),
numbered 1..n in increasing label value, with the label name as Segment Label,
the label value in medseg's private element (:mod:`medseg.io.dicom.derived`) and
algorithm type AUTOMATIC. The file is written atomically through
``highdicom.seg.Segmentation``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.errors import ImageWriteError
from medseg.io.atomic import atomic_path
from medseg.io.dicom.derived import DerivedSeries, label_frames, set_label_value
from medseg.volume import Volume

__all__ = ["write_dicom_seg"]

log = logging.getLogger(__name__)


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


def write_dicom_seg(labels: Volume, out_path: str | os.PathLike, series: DerivedSeries) -> Path:
    """Write ``labels`` as a BINARY DICOM-SEG referencing the source series.

    Parameters
    ----------
    labels : integer label map, Volume (x, y, z) with RAS+ mm affine, on the grid
        of the DICOM series (as returned by ``predict`` on ``read_volume(folder)``).
    out_path : destination ``.dcm``; written atomically.
    series : :class:`~medseg.io.dicom.derived.DerivedSeries`: the source slice files, the
        label names (Segment Label), the algorithm (Algorithm Identification of every
        segment) and the new series' description ("medseg segmentation") and number (300).

    Returns
    -------
    The written path. Segment ``n`` holds the ``n``-th smallest non-zero label value present,
    and says which (:func:`~medseg.io.dicom.derived.label_value`).

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
                                  300 if series.number is None else series.number,
                                  series.series_uid, series.instance_uid)
    for item in seg.SegmentSequence:  # segment n holds the n-th value
        set_label_value(item, values[int(item.SegmentNumber) - 1])
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            seg.save_as(tmp)
    except OSError as exc:
        raise ImageWriteError(f"cannot write DICOM-SEG: {exc}", out) from exc
    log.info("wrote DICOM-SEG %s: %d segments over %d frames", out, len(values), len(sources))
    return out


def _build_segmentation(sources, pixel_array, values, label_names, algorithm_name,
                        algorithm_version, series_description, series_number,
                        series_uid=None, instance_uid=None):
    import highdicom as hd

    from medseg import __version__

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(
            values, label_names, algorithm_name, algorithm_version
        ),
        series_instance_uid=series_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=instance_uid or hd.UID(),
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
