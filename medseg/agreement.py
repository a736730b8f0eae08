"""Agreement of paired measurements: Bland-Altman bias, limits of agreement, Pearson's r.

Used for the volume agreement of an evaluation (predicted against true volume
of each label, in mL): Bland JM, Altman DG. Statistical methods for assessing
agreement between two methods of clinical measurement. Lancet 1986;1:307-10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["volume_agreement"]

#: Normal quantile of the 95 % limits of agreement.
LOA_Z = 1.96


def volume_agreement(pred_ml: Sequence[float], true_ml: Sequence[float]) -> dict[str, Any]:
    """Bland-Altman agreement and Pearson's r of predicted and true volumes.

    Parameters
    ----------
    pred_ml, true_ml : (n,) predicted and true volumes in mL, paired by index;
        pairs with a non-finite value are left out.

    Returns
    -------
    dict
        ``n`` (pairs used), ``bias_ml`` (mean of pred - true), ``sd_ml`` (its
        standard deviation, ddof=1), ``loa_low_ml`` / ``loa_high_ml`` (95 %
        limits of agreement, bias -/+ 1.96 sd) and ``pearson_r``. ``None`` where
        undefined: no pair (bias), fewer than two (sd, limits, r), or a constant
        volume (r).

    Examples
    --------
    >>> volume_agreement([11.0, 19.0, 33.0], [10.0, 20.0, 30.0])["bias_ml"]
    1.0
    """
    pred = np.asarray(pred_ml, dtype=np.float64)
    true = np.asarray(true_ml, dtype=np.float64)
    keep = np.isfinite(pred) & np.isfinite(true)
    pred, true = pred[keep], true[keep]
    diff = pred - true
    out: dict[str, Any] = {"n": int(diff.size), "bias_ml": None, "sd_ml": None,
                           "loa_low_ml": None, "loa_high_ml": None, "pearson_r": None}
    if diff.size:
        out["bias_ml"] = float(diff.mean())
    if diff.size >= 2:
        sd = float(diff.std(ddof=1))
        out.update(sd_ml=sd, loa_low_ml=out["bias_ml"] - LOA_Z * sd,
                   loa_high_ml=out["bias_ml"] + LOA_Z * sd, pearson_r=_pearson(pred, true))
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    dx, dy = x - x.mean(), y - y.mean()
    scale = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(np.clip((dx @ dy) / scale, -1.0, 1.0)) if scale > 0 else None
