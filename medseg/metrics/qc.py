"""Does quality control work? Estimated against true Dice, flags against failures.

For (case, label) rows with an estimated Dice, a QC flag and the true Dice
(:func:`qc_agreement`):

* ``spearman``: Spearman's rank correlation of estimated and true Dice (``scipy.stats``);
* ``mae``: the mean absolute error between them;
* ``auroc_flag``: the area under the ROC curve of ``flag != "ok"`` as a detector of rows
  whose true Dice is below ``failure_dice`` (0.8); for a binary score it is
  ``(sensitivity + specificity) / 2``;
* ``auroc_estimate``: the same for ``1 - estimated_dice`` as a continuous score.

AUROC is the Mann-Whitney statistic ``P(score_pos > score_neg) + P(tie) / 2`` (ties count
one half), from average ranks (:func:`auroc`): written here because it is three lines of
NumPy and scikit-learn is not a dependency (the tests check it against scikit-learn's
``roc_auc_score`` where that is installed). NaN where a class is empty or fewer than 2 rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import UsageError

__all__ = ["FAILURE_DICE", "auroc", "qc_agreement"]

#: A row whose true Dice is below this is a failure QC should catch.
FAILURE_DICE = 0.8


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for the ``positives`` (module docstring)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positives, dtype=bool)
    if s.shape != y.shape:
        raise UsageError(f"auroc needs as many scores as labels, got {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks: ties count one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def qc_agreement(estimated: Sequence[float], true: Sequence[float], flags: Sequence[str],
                 failure_dice: float = FAILURE_DICE) -> dict[str, Any]:
    """Spearman, MAE and AUROCs of QC against the true Dice (module docstring); rows where
    either Dice is NaN are left out (``n`` counts the others)."""
    from scipy.stats import spearmanr

    e = np.asarray(estimated, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    f = np.asarray([str(v) for v in flags])
    keep = np.isfinite(e) & np.isfinite(t)
    e, t, f = e[keep], t[keep], f[keep]
    failed = t < failure_dice
    out: dict[str, Any] = {"n": int(e.size), "failures": int(failed.sum()),
                           "failure_dice": failure_dice, "flagged": int((f != "ok").sum())}
    if e.size >= 2 and np.ptp(e) > 0 and np.ptp(t) > 0:
        out["spearman"] = float(spearmanr(e, t).statistic)
    else:
        out["spearman"] = math.nan
    out["mae"] = float(np.abs(e - t).mean()) if e.size else math.nan
    out["auroc_flag"] = auroc((f != "ok").astype(np.float64), failed)
    out["auroc_estimate"] = auroc(1.0 - e, failed)
    return out
