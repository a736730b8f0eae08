"""The training cohort of a model, measured from its cases (:class:`medseg.confidence.Cohort`).

Training (:mod:`medseg.training`) measures its training cases once and writes the cohort
into the model card; ``medseg calibrate`` does the same for a model that lacks one. Each
case is read as prediction reads it (:func:`medseg.data.manifest.read_case`) and measured
by the same functions QC applies to a prediction (:func:`medseg.confidence.label_measures`,
:func:`medseg.confidence.image_measures`, :func:`medseg.confidence.extent_measures`): volumes
and large components of each label on the label's own grid, intensity statistics and field
of view of the image as given (before any preprocessing).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Sequence

from medseg.confidence import (Cohort, QcThresholds, extent_measures, image_measures,
                               label_measures)
from medseg.data.manifest import read_case
from medseg.io.cases import Case
from medseg.volume import Volume

__all__ = ["measure_cohort", "read_labelled"]

log = logging.getLogger(__name__)


def measure_cohort(cases: Sequence[Case], label_values: Sequence[int],
                   modality: str | None = None, progress: bool | None = None,
                   component_fraction: float = QcThresholds.component_fraction) -> Cohort:
    """The cohort of ``cases`` (each with a label map) for the foreground ``label_values``.

    Parameters
    ----------
    cases : labelled cases (image and label files).
    label_values : the foreground label values to describe (0 is left out).
    modality : what the images are ("CT", "MRI"), for QC's messages; None if unknown.
    progress : tqdm bar over cases (None: on a terminal only).
    component_fraction : what counts as a large component (:class:`QcThresholds`).

    Raises
    ------
    UsageError : no case; DataError / ImageReadError naming a case's unreadable file.
    """
    values = [int(v) for v in label_values if int(v) != 0]
    labels, images, extents = [], [], []
    for _, image, label in read_labelled(cases, "training cohort", progress):
        labels.append(label_measures(label.array, label.voxel_volume_ml, values,
                                     component_fraction))
        images.append(image_measures(image.array, image.has_channels))
        extents.append(extent_measures(image.affine, image.spatial_shape))
    cohort = Cohort.of(labels, images, values, modality, extents)
    log.info("training cohort: %d cases, %d labels", cohort.cases, len(values))
    return cohort


def read_labelled(cases: Sequence[Case], desc: str, progress: bool | None = None
                  ) -> Iterator[tuple[Case, Volume, Volume]]:
    """(case, image, label) of each case that has a label, read one at a time under a tqdm
    bar (``progress`` None: on a terminal only)."""
    from tqdm.auto import tqdm

    bar = tqdm(cases, desc=desc, unit="case", file=sys.stderr,
               disable=None if progress is None else not progress)
    for case in bar:
        image, label = read_case(case)
        if label is not None:
            yield case, image, label
