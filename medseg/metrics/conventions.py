"""The named metric conventions: how the surface, HD95, AVD/ASSD and empty masks are defined.

A :class:`Convention` is a small frozen record read by :mod:`medseg.metrics.surface`
and :mod:`medseg.metrics.overlap`. Four exist (see the table in
:mod:`medseg.metrics`): ``"medseg"`` (the default), ``"monai"``, ``"deepmind"``
and ``"medpy"``. Under a peer's name medseg reproduces that peer's numbers,
including its values for empty masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from medseg.errors import check_option

__all__ = ["Convention", "CONVENTIONS", "get_convention", "STATUSES", "mask_status"]

NAN = math.nan
INF = math.inf

#: Per-label status, recorded in every row so empty masks never vanish from a mean.
STATUSES = ("ok", "empty_pred", "empty_gt", "both_empty")

_KEYS = ("dice", "iou", "hd_mm", "hd95_mm", "avd_mm", "assd_mm", "nsd")


def _values(dice: float, hd: float, hd95: float, avd: float, nsd: float) -> dict[str, float]:
    """Empty-mask values: iou follows dice, assd follows avd."""
    return dict(zip(_KEYS, (dice, dice, hd, hd95, avd, avd, nsd)))


@dataclass(frozen=True)
class Convention:
    """How one convention defines the surface metrics.

    Attributes
    ----------
    name : the convention's name.
    surface : ``"voxels"`` (mask voxels with a face-neighbour outside the mask,
        i.e. mask minus its erosion by the 6-neighbourhood; points at voxel
        centres) or ``"surfels"`` (2x2x2 cubes with mixed corners, each
        weighted by its marching-cubes area in mm^2).
    hd95 : ``"directed_max"`` (max of the 95th percentiles of each direction),
        ``"pooled"`` (95th percentile of both directions' distances together)
        or ``"area_weighted"`` (first distance whose cumulative surfel area
        reaches 95 %, per direction, then the max).
    float32 : distances rounded to float32 before any statistic (MONAI).
    empty : metric values for ``empty_pred``, ``empty_gt`` and ``both_empty``.
    """

    name: str
    surface: str
    hd95: str
    float32: bool = False
    empty: dict[str, dict[str, float]] = field(default_factory=dict)


_MEDSEG_EMPTY = {
    "empty_pred": _values(0.0, INF, INF, INF, 0.0),
    "empty_gt": _values(0.0, INF, INF, INF, 0.0),
    "both_empty": _values(1.0, 0.0, 0.0, 0.0, 1.0),
}

CONVENTIONS: dict[str, Convention] = {
    "medseg": Convention("medseg", "voxels", "directed_max", empty=_MEDSEG_EMPTY),
    "monai": Convention(
        "monai",
        "voxels",
        "directed_max",
        float32=True,
        empty={
            # MONAI: torch.quantile of all-inf distances is nan; DiceMetric /
            # MeanIoU ignore_empty=True give nan when the ground truth is empty.
            "empty_pred": _values(0.0, INF, NAN, INF, 0.0),
            "empty_gt": _values(NAN, INF, NAN, INF, 0.0),
            "both_empty": _values(NAN, NAN, NAN, NAN, NAN),
        },
    ),
    "deepmind": Convention(
        "deepmind",
        "surfels",
        "area_weighted",
        empty={
            "empty_pred": _values(0.0, INF, INF, INF, 0.0),
            "empty_gt": _values(0.0, INF, INF, INF, 0.0),
            "both_empty": _values(NAN, INF, INF, NAN, NAN),
        },
    ),
    # MedPy raises on an empty mask for every distance: medseg's values stand in.
    # Both empty: its dc() returns 1.0 (``except ZeroDivisionError: dc = 1.0``) and its
    # jc() 1.0. (On NumPy >= 2.3 count_nonzero returns a NumPy integer, the division gives
    # nan instead of raising and dc() returns nan by accident; medseg follows the code.)
    "medpy": Convention("medpy", "voxels", "pooled", empty=_MEDSEG_EMPTY),
}


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name``; UsageError with a suggestion otherwise."""
    return CONVENTIONS[check_option(name, CONVENTIONS, "convention")]


def mask_status(n_pred: int, n_gt: int) -> str:
    """``ok``, ``empty_pred``, ``empty_gt`` or ``both_empty`` from the two voxel counts."""
    if n_pred and n_gt:
        return "ok"
    if n_gt:
        return "empty_pred"
    return "empty_gt" if n_pred else "both_empty"
