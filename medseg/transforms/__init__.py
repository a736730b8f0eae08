"""Preprocessing transforms, each with its inverse.

* :mod:`~medseg.transforms.orientation` -- reorient (axis permutation/flip, exact);
* :mod:`~medseg.transforms.resample` -- resample to a spacing / onto a grid (torch);
* :mod:`~medseg.transforms.intensity` -- CT window, MR z-score, percentile clip;
* :mod:`~medseg.transforms.crop` -- crop to the foreground box and pad back;
* :mod:`~medseg.transforms.pipeline` -- :class:`Preprocessing`, the ordered,
  serialisable combination; ``apply`` returns :class:`Preprocessed` with its
  :class:`History`;
* :mod:`~medseg.transforms.history` -- :class:`History`, the applied steps, each
  inverting itself as the volume's type says (LabelMap nearest, Probabilities linear).
"""

from medseg.transforms.crop import foreground_bbox, uncrop
from medseg.transforms.history import History
from medseg.transforms.intensity import clip_percentiles, ct_window, zscore
from medseg.transforms.orientation import (
    apply_orientation,
    invert_orientation,
    orientation_transform,
    reorient,
)
from medseg.transforms.pipeline import Preprocessed, Preprocessing
from medseg.transforms.resample import grid_for_spacing, resample, resample_to_grid

__all__ = [
    "History",
    "Preprocessed",
    "Preprocessing",
    "apply_orientation",
    "clip_percentiles",
    "ct_window",
    "foreground_bbox",
    "grid_for_spacing",
    "invert_orientation",
    "orientation_transform",
    "reorient",
    "resample",
    "resample_to_grid",
    "uncrop",
    "zscore",
]
