"""Segmentation metrics over integer label maps, with named conventions.

Pure functions over ``(x, y, z)`` integer label arrays (0 = background) and a
required ``spacing_mm`` (voxel size in mm along x, y, z). Per label, the
surfaces and the distances between them are computed once, on the label's
bounding box plus a one-voxel margin, and every surface metric is derived
from that one set of distances. Distances are in mm, volumes in mL.

Metrics: ``dice``, ``iou`` (Jaccard), ``accuracy`` ((TP + TN) / all voxels),
``hd_mm`` (Hausdorff), ``hd95_mm``, ``avd_mm`` (AVD(A, B) = max(d(A, B), d(B, A)),
d(A, B) the mean over the surface points of A of the distance to the nearest
point of B), ``assd_mm`` (mean over the points of both surfaces together),
``nsd`` (surface Dice at ``nsd_tolerance_mm``: share of both surfaces within
the tolerance, distance <= tolerance), ``vol_pred_ml``, ``vol_gt_ml``; and a
``status`` per label: ``ok``, ``empty_pred``, ``empty_gt`` or ``both_empty``.

Conventions (``convention=``; under a peer's name medseg reproduces that
peer's values to 1e-6 relative, empty masks included):

============ ====================================== ============================================ ================================================== ==========================================================
convention   surface                                HD95                                         AVD / ASSD                                         empty masks (one empty / both empty)
============ ====================================== ============================================ ================================================== ==========================================================
``medseg``   boundary voxels: mask minus its        max of the two directed 95th percentiles     AVD = max of the directed means; ASSD = mean       one: dice, iou, nsd 0; distances inf.
(default)    erosion by the 6-neighbourhood         (linear interpolation); float64              over both surfaces' points                         both: dice, iou, nsd 1; distances 0
             (outside the array = background);
             voxel centres, weight 1
``monai``    same as ``medseg`` (MONAI 1.x          same as ``medseg`` on float32 distances      same, float32 distances (compute_average_          empty pred: dice 0, hd inf, hd95 nan, AVD/ASSD inf, nsd 0;
             ``get_mask_edges``, Euclidean)         (``torch.quantile``)                         surface_distance symmetric / directed)             empty gt: dice nan, hd inf, hd95 nan, AVD/ASSD inf, nsd 0;
                                                                                                                                                    both: everything nan
``deepmind`` 2x2x2 cubes with mixed corners         area-weighted: per direction the first       area-weighted means; ASSD = area-weighted mean     one: dice 0, hd/hd95/AVD/ASSD inf, nsd 0.
             (surface-distance), each weighted by   sorted distance whose cumulative area        over both surfaces                                 both: dice nan, hd/hd95 inf, AVD/ASSD nan, nsd nan
             its marching-cubes area (mm^2)         reaches 95 %; the max of both; HD = 100 %
``medpy``    same as ``medseg`` (medpy.metric.      95th percentile of both directions'          AVD = max(asd(P, G), asd(G, P)); ASSD =            MedPy's distances raise on empty masks: medseg's values
             binary, connectivity 1)                distances pooled (``numpy.percentile``)      ``assd``; NSD (not in MedPy): as ``medseg``        stand in; both empty: dice 1 (MedPy ``dc``'s code), iou 1 (``jc``)
============ ====================================== ============================================ ================================================== ==========================================================

The pixel accuracy and the volumes are the same under every convention. IoU
follows Dice's empty-mask rule. Labels and statuses make every row count: a
missed structure is a row with ``status = "empty_pred"``, never a dropped NaN.

Lesion-wise metrics (connected components matched one to one on IoU: TP/FP/FN,
detection precision/recall/F1, BraTS 2023 lesion-wise Dice, SQ, RQ, PQ) are
:func:`lesion_metrics`; definitions in :mod:`medseg.metrics.lesions`.
"""

from medseg.metrics.conventions import CONVENTIONS, STATUSES, Convention, get_convention
from medseg.metrics.evaluate import METRIC_KEYS, check_label_array, evaluate_arrays
from medseg.metrics.lesions import (
    LabelLesions,
    Lesion,
    LesionCounts,
    LesionOptions,
    MatchRule,
    label_lesions,
    lesion_metrics,
)
from medseg.metrics.overlap import OverlapCounts, count_overlap, overlap_metrics
from medseg.metrics.surface import SurfaceDistances, surface_distances, surface_metrics

__all__ = [
    "CONVENTIONS",
    "STATUSES",
    "METRIC_KEYS",
    "Convention",
    "LabelLesions",
    "Lesion",
    "LesionCounts",
    "LesionOptions",
    "MatchRule",
    "OverlapCounts",
    "SurfaceDistances",
    "check_label_array",
    "count_overlap",
    "evaluate_arrays",
    "get_convention",
    "label_lesions",
    "lesion_metrics",
    "overlap_metrics",
    "surface_distances",
    "surface_metrics",
]
