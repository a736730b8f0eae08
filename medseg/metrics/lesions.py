"""Lesion-wise (instance) metrics: connected components matched one to one.

For each scored label, the voxels of that label in the prediction and in the
ground truth are split into connected components (:func:`scipy.ndimage.label`;
``connectivity`` 6 = faces, 18 = faces and edges, 26 = faces, edges and
corners). Components are numbered 1, 2, ... in the order ``scipy.ndimage.label``
finds them (C order of the ``(x, y, z)`` array). One ``bincount`` over the
(true id, predicted id) pairs of the label's voxels gives every component's
size and every overlap, hence the IoU of each overlapping pair.

**Matching** is one to one: among the pairs that pass the match rule
(``"iou>0"``, the default: any overlap; ``"iou>=T"`` or ``"iou>T"``), the
assignment that maximises the sum of IoU (:func:`scipy.optimize.linear_sum_assignment`,
solved separately on each group of mutually overlapping components). A matched
true lesion is a TP, an unmatched true lesion a FN, an unmatched predicted
lesion a FP. One true lesion split into two predictions gives one TP and one
FP; two true lesions merged into one prediction give one TP and one FN.

**Per label** (counts and sums add over cases, see :class:`LesionCounts`):

* ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
  ``f1 = 2 TP / (2 TP + FP + FN)`` (= recognition quality ``rq``);
* ``lesion_dice`` (BraTS 2023's formula): the sum of the Dice of each matched
  pair divided by ``TP + FN + FP``, i.e. the mean over the true lesions of
  the Dice with their match (a missed lesion counts 0) in which every false
  positive is one more 0;
* ``sq`` (segmentation quality): mean IoU of the matched pairs;
  ``pq`` (panoptic quality) ``= sq * rq`` = (sum of matched IoU) / (TP + FP/2 + FN/2).

Undefined values are NaN: precision without predicted lesions, recall without
true lesions, ``sq`` without a match, and every ratio of a case (or label)
with no lesion in either map; ``f1``, ``lesion_dice`` and ``pq`` are 0 when
there are lesions but no match. A case without any lesion in both maps is thus
NaN (BraTS 2023's script scores it 1): like a ``both_empty`` row, it is left
out of means rather than rewarded.

Differences from BraTS 2023's lesion-wise script: BraTS dilates the true
lesions (3 iterations) to group nearby components, lets every predicted
component that touches a true lesion count towards it (many to one), and
drops lesions under a size threshold (e.g. 50 voxels); medseg matches
components one to one without dilation or size threshold, as
panoptica's ``MaxBipartiteMatching`` does on IoU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from medseg.errors import UsageError

__all__ = [
    "CONNECTIVITIES", "LESION_KINDS", "LESION_METRICS", "Lesion", "LabelLesions", "LesionCounts",
    "LesionOptions", "MatchRule", "label_lesions", "lesion_metrics",
]

CONNECTIVITIES = (6, 18, 26)
#: ``kind`` of a lesion row: matched true lesion, missed true lesion, unmatched prediction.
LESION_KINDS = ("tp", "fn", "fp")
#: Keys of :meth:`LesionCounts.metrics`.
LESION_METRICS = ("precision", "recall", "f1", "lesion_dice", "sq", "rq", "pq")
_RULE = re.compile(r"^\s*iou\s*(>=|>)\s*([0-9.eE+-]+)\s*$")
_DENSE_PAIRS_MAX = 1 << 22  # (n_gt + 1) * (n_pred + 1) cells up to which the pair table is dense


# -- options ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchRule:
    """Which (true, predicted) pairs may be matched: ``iou > threshold`` or ``iou >= threshold``."""

    threshold: float = 0.0
    strict: bool = True

    @classmethod
    def parse(cls, text: str, name: str = "match") -> MatchRule:
        """``"iou>0"``, ``"iou>=0.5"``, ``"iou>T"`` (0 <= T < 1) or ``"iou>=T"`` (0 < T <= 1).

        Raises
        ------
        UsageError
            Naming ``name``, for any other text.
        """
        found = _RULE.match(str(text))
        try:
            op, value = (found.group(1), float(found.group(2))) if found else ("", math.nan)
        except ValueError:
            op, value = "", math.nan
        strict = op == ">"
        ok = (0.0 <= value < 1.0) if strict else (0.0 < value <= 1.0)
        if not found or not ok:
            raise UsageError(f"{name} must be 'iou>T' (0 <= T < 1) or 'iou>=T' (0 < T <= 1), "
                             f"e.g. 'iou>0' or 'iou>=0.5'; got {text!r}")
        return cls(value, strict)

    def passes(self, iou: np.ndarray) -> np.ndarray:
        """Boolean array: which IoU values pass the rule."""
        return iou > self.threshold if self.strict else iou >= self.threshold

    def __str__(self) -> str:
        return f"iou{'>' if self.strict else '>='}{self.threshold:g}"


@dataclass(frozen=True)
class LesionOptions:
    """What ``medseg evaluate --instances`` scores lesion-wise.

    Parameters
    ----------
    labels : label values (int, or digit strings) or label names to split into lesions.
    connectivity : 6, 18 or 26 (voxel neighbourhood of a connected component).
    match : match rule, ``"iou>0"`` (default) or ``"iou>=T"`` (see :class:`MatchRule`).
    """

    labels: tuple[int | str, ...]
    connectivity: int = 26
    match: str = "iou>0"

    def __post_init__(self) -> None:
        if isinstance(self.labels, (str, int)):
            object.__setattr__(self, "labels", (self.labels,))
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.labels:
            raise UsageError("--instances: expected at least one label value or name, got none")
        if self.connectivity not in CONNECTIVITIES or isinstance(self.connectivity, bool):
            raise UsageError(f"--connectivity must be 6, 18 or 26, got {self.connectivity!r}")
        MatchRule.parse(self.match, "--match")

    @property
    def rule(self) -> MatchRule:
        """The parsed match rule."""
        return MatchRule.parse(self.match, "--match")

    def resolve(self, names: Mapping[int, str] | None) -> tuple[int, ...]:
        """The label values, names looked up in ``names`` (label -> name).

        Raises
        ------
        UsageError
            An entry that is neither a positive integer nor one of the names.
        """
        by_name = {str(n): k for k, n in (names or {}).items() if n and k > 0}
        values = [_label_value(item, by_name) for item in self.labels]
        return tuple(sorted(set(values)))


def _label_value(item: int | str, by_name: Mapping[str, int]) -> int:
    text = str(item).strip()
    is_int = isinstance(item, (int, np.integer)) and not isinstance(item, bool)
    if is_int or text.isdigit():
        value = int(text)
        if value > 0:
            return value
    elif text in by_name:
        return by_name[text]
    known = f"; known names: {', '.join(sorted(by_name))}" if by_name else (
        " (names need a label file: --labels)")
    raise UsageError(f"--instances: {item!r} is not a positive integer label value or a known "
                     f"label name{known}")


# -- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lesion:
    """One row of ``lesions.csv`` (without case and label).

    ``lesion_id`` numbers the true lesion (``tp``, ``fn``) or the predicted one
    (``fp``); ``partner_id`` the matched predicted lesion (None = none). Volumes in
    mL; ``distance_mm`` between the two centroids in world (RAS) mm, NaN
    without a partner; ``dice`` and ``iou`` are 0 without a partner.
    """

    lesion_id: int
    kind: str
    volume_ml: float
    partner_id: int | None = None
    partner_volume_ml: float = math.nan
    dice: float = 0.0
    iou: float = 0.0
    distance_mm: float = math.nan


@dataclass(frozen=True)
class LesionCounts:
    """Additive lesion counts of one label: over cases, sum them (``a + b``)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    dice_sum: float = 0.0
    iou_sum: float = 0.0

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                            self.dice_sum + other.dice_sum, self.iou_sum + other.iou_sum)

    def metrics(self) -> dict[str, float]:
        """Precision, recall, F1 (= RQ), lesion-wise Dice, SQ and PQ (module docstring)."""
        tp, fp, fn = self.tp, self.fp, self.fn
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        return {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": f1,
                "lesion_dice": _ratio(self.dice_sum, tp + fn + fp),
                "sq": _ratio(self.iou_sum, tp), "rq": f1,
                "pq": _ratio(self.iou_sum, tp + 0.5 * (fp + fn))}


def _ratio(num: float, den: float) -> float:
    return float(num) / den if den else math.nan


@dataclass(frozen=True)
class LabelLesions:
    """Lesions of one label in one case: the counts and one :class:`Lesion` per row."""

    counts: LesionCounts = LesionCounts()
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)


# -- computation ------------------------------------------------------------------------------
def lesion_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    affine: np.ndarray,
    labels: Iterable[int],
    connectivity: int = 26,
    match: str = "iou>0",
) -> dict[int, LabelLesions]:
    """Lesion-wise counts and rows of each of ``labels`` (see the module docstring).

    Parameters
    ----------
    pred, gt : (x, y, z) integer label maps on the same grid.
    affine : 4x4 voxel -> RAS+ mm matrix of that grid (volumes, centroid distances).
    labels : label values to split into lesions.
    connectivity : 6, 18 or 26.
    match : ``"iou>0"`` (default), ``"iou>=T"`` or ``"iou>T"``.

    Returns
    -------
    ``{label: LabelLesions}``; a label without any lesion has zero counts, no rows.

    Examples
    --------
    >>> gt = np.zeros((6, 6, 6), np.uint8); gt[1:3, 1:3, 1:3] = 1; gt[4:6, 4:6, 4:6] = 1
    >>> res = lesion_metrics(gt * (np.arange(6) < 3)[:, None, None], gt, np.eye(4), [1])[1]
    >>> res.counts.tp, res.counts.fn, res.counts.metrics()["lesion_dice"]
    (1, 1, 0.5)
    """
    rule = MatchRule.parse(match)
    if connectivity not in CONNECTIVITIES:
        raise UsageError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if pred.shape != gt.shape:
        from medseg.errors import GeometryError

        raise GeometryError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")
    return {int(k): label_lesions(pred == k, gt == k, affine, connectivity, rule)
            for k in labels}


def label_lesions(
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    affine: np.ndarray,
    connectivity: int = 26,
    rule: MatchRule = MatchRule(),
) -> LabelLesions:
    """Lesions of two (x, y, z) boolean masks (one label); see :func:`lesion_metrics`."""
    from scipy import ndimage

    union = pred_mask | gt_mask
    box = ndimage.find_objects(union.view(np.uint8))
    if not box:
        return LabelLesions()
    box = box[0]
    structure = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    gt_cc, n_gt = ndimage.label(gt_mask[box], structure)
    pred_cc, n_pred = ndimage.label(pred_mask[box], structure)
    fg = np.nonzero(union[box])
    g, p, counts = _pair_counts(gt_cc[fg], pred_cc[fg], n_gt, n_pred)
    size_g = np.bincount(g, counts, minlength=n_gt + 1)
    size_p = np.bincount(p, counts, minlength=n_pred + 1)
    both = (g > 0) & (p > 0)
    g, p, inter = g[both], p[both], counts[both]
    iou = inter / (size_g[g] + size_p[p] - inter)
    matched = _assign(g, p, iou, rule)
    origin = np.array([s.start for s in box], dtype=np.float64)
    centroids = [_centroids(ids[fg], fg, n, origin, affine) for ids, n in ((gt_cc, n_gt),
                                                                          (pred_cc, n_pred))]
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0
    pairs = {int(a): (int(b), int(i)) for a, b, i in zip(g[matched], p[matched], inter[matched])}
    return _rows(pairs, (size_g, size_p), centroids, voxel_ml)


def _pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray, n_gt: int, n_pred: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count of every (true id, predicted id) pair present (0 = background), as triplets.

    One bincount over the pair ids ``gt * (n_pred + 1) + pred`` when that table
    is small, else the same counts from one sort (``np.unique``).
    """
    width = n_pred + 1
    pair = gt_ids.astype(np.int64) * width + pred_ids
    if (n_gt + 1) * width <= _DENSE_PAIRS_MAX:
        table = np.bincount(pair, minlength=(n_gt + 1) * width)
        ids = np.flatnonzero(table)
        counts = table[ids]
    else:
        ids, counts = np.unique(pair, return_counts=True)
    return ids // width, ids % width, counts.astype(np.int64)


def _assign(g: np.ndarray, p: np.ndarray, iou: np.ndarray, rule: MatchRule) -> np.ndarray:
    """Indices of the pairs of a one-to-one matching maximising the sum of IoU.

    Only pairs passing ``rule`` take part; the problem is solved on each group
    of mutually overlapping components separately (same optimum, small matrices).
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    candidates = np.flatnonzero(rule.passes(iou))
    if not candidates.size:
        return candidates
    rows, r = np.unique(g[candidates], return_inverse=True)
    cols, c = np.unique(p[candidates], return_inverse=True)
    n = rows.size + cols.size
    graph = coo_matrix((np.ones(r.size), (r, rows.size + c)), shape=(n, n))
    group = connected_components(graph, directed=False)[1][r]
    chosen = []
    for k in np.unique(group):
        edges = candidates[group == k]
        er, ri = np.unique(r[group == k], return_inverse=True)
        ec, ci = np.unique(c[group == k], return_inverse=True)
        weight = np.zeros((er.size, ec.size))
        weight[ri, ci] = iou[edges]
        best_r, best_c = linear_sum_assignment(weight, maximize=True)
        lookup = {(a, b): e for a, b, e in zip(ri, ci, edges)}
        chosen += [lookup[(a, b)] for a, b in zip(best_r, best_c) if (a, b) in lookup]
    return np.sort(np.array(chosen, dtype=np.int64))


def _centroids(ids: np.ndarray, fg: tuple[np.ndarray, ...], n: int, origin: np.ndarray,
               affine: np.ndarray) -> np.ndarray:
    """(n + 1, 3) RAS mm centroid of each component id (row 0 unused)."""
    size = np.maximum(np.bincount(ids, minlength=n + 1), 1)
    index = np.stack([np.bincount(ids, fg[a], minlength=n + 1) / size for a in range(3)], 1)
    affine = np.asarray(affine, np.float64)
    return (index + origin) @ affine[:3, :3].T + affine[:3, 3]


def _rows(pairs: dict[int, tuple[int, int]], sizes: tuple[np.ndarray, np.ndarray],
          centroids: list[np.ndarray], voxel_ml: float) -> LabelLesions:
    """The rows (true lesions by id, then unmatched predictions) and counts of one label."""
    size_g, size_p = sizes
    rows: list[Lesion] = []
    dice_sum = iou_sum = 0.0
    for gid in range(1, size_g.size):
        volume = float(size_g[gid]) * voxel_ml
        if gid not in pairs:
            rows.append(Lesion(gid, "fn", volume))
            continue
        pid, inter = pairs[gid]
        total = float(size_g[gid] + size_p[pid])
        dice, iou = 2.0 * inter / total, inter / (total - inter)
        dice_sum, iou_sum = dice_sum + dice, iou_sum + iou
        distance = float(np.linalg.norm(centroids[0][gid] - centroids[1][pid]))
        rows.append(Lesion(gid, "tp", volume, pid, float(size_p[pid]) * voxel_ml, dice, iou,
                           distance))
    matched = {pid for pid, _ in pairs.values()}
    rows += [Lesion(pid, "fp", float(size_p[pid]) * voxel_ml)
             for pid in range(1, size_p.size) if pid not in matched]
    tp = len(pairs)
    counts = LesionCounts(tp, size_p.size - 1 - tp, size_g.size - 1 - tp, dice_sum, iou_sum)
    return LabelLesions(counts, tuple(rows))
