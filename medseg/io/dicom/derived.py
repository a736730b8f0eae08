"""What a DICOM labels object (DICOM-SEG, RTSTRUCT) of a label map is made of, and how its
segments and ROIs carry the label values.

Label values survive a round trip label map -> DICOM -> label map:

* an RTSTRUCT's ROI Number is the label value (the standard only asks ROI Numbers to be
  unique within the structure set);
* a BINARY DICOM-SEG must number its segments 1, 2, ... (highdicom enforces the
  standard's rule), so each Segment Sequence item also holds the label value in a
  private element (creator ``"medseg"``, :data:`LABEL_VALUE_TAG`); readers that do not
  know it still see the segments in increasing label value.

The names travel as Segment Label / ROI Name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medseg.errors import DataError
from medseg.io.dicom.geometry import frames_for_sources, read_sources
from medseg.volume import Volume

__all__ = ["DerivedSeries", "label_frames", "set_label_value", "label_value",
           "LABEL_VALUE_CREATOR", "LABEL_VALUE_TAG"]

#: Private creator and (group, element offset) of the label value in a Segment Sequence item.
LABEL_VALUE_CREATOR = "medseg"
LABEL_VALUE_TAG = (0x0071, 0x01)
#: The largest label value a DICOM object carries (US: uint16 label maps).
_MAX_VALUE = 65535


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
    series_uid, instance_uid : Series and SOP Instance UID of the new object (None: new
        random UIDs). A service that may write and send the same result twice (``medseg
        serve`` after a restart) derives them from its input, so that a resend replaces the
        object a PACS holds instead of adding a second one.
    """

    source_files: Sequence[str | os.PathLike]
    label_names: Mapping[int, str]
    algorithm_name: str = "medseg"
    algorithm_version: str | None = None
    description: str | None = None
    number: int | None = None
    series_uid: str | None = None
    instance_uid: str | None = None


def label_frames(labels: Volume, source_files: Sequence[str | os.PathLike],
                 out_path: str | os.PathLike, what: str) -> tuple[list, np.ndarray, list[int]]:
    """What a derived object (``what``: DICOM-SEG, RTSTRUCT) of ``labels`` is made of.

    Returns
    -------
    sources : the source slice headers (:func:`~medseg.io.dicom.geometry.read_sources`).
    frames : (n_slices, rows, cols) label frames aligned with them
        (:func:`~medseg.io.dicom.geometry.frames_for_sources`).
    values : the non-zero label values present, ascending.

    Raises
    ------
    DataError
        naming ``out_path``: a non-integer map, one without foreground, or a label value
        above 65535.
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
    if values[-1] > _MAX_VALUE:
        raise DataError(f"label value {values[-1]} does not fit a {what} (at most "
                        f"{_MAX_VALUE})", out_path)
    return sources, frames, values


def set_label_value(item, value: int) -> None:
    """Store label ``value`` in a Segment Sequence ``item`` (private, :data:`LABEL_VALUE_TAG`)."""
    group, offset = LABEL_VALUE_TAG
    block = item.private_block(group, LABEL_VALUE_CREATOR, create=True)
    block.add_new(offset, "US", int(value))


def label_value(item) -> int | None:
    """The label value medseg stored in a Segment Sequence ``item``, None where there is none
    (another writer) or it is not a value in 1..65535."""
    group, offset = LABEL_VALUE_TAG
    try:
        value = item.private_block(group, LABEL_VALUE_CREATOR)[offset].value
    except KeyError:
        return None
    if isinstance(value, bytes):  # an implicit-VR file leaves the private element raw
        value = int.from_bytes(value[:2], "little") if len(value) >= 2 else None
    if not isinstance(value, int) or not 0 < value <= _MAX_VALUE:
        return None
    return int(value)
