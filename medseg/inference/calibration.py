"""Temperature scaling: fitting the card's temperature on labelled cases.

Fitting is separate from applying (as scikit-learn's ``calibration`` module keeps them):
:func:`fit_temperature` finds the T that minimises the negative log-likelihood of
``softmax(log p / T)`` over the sampled voxels (Guo et al. 2017; for one network this is
temperature scaling of its logits); prediction applies the card's T
(:mod:`medseg.confidence`). :func:`calibrate` predicts labelled cases with a model, samples
foreground-near voxels (:func:`medseg.metrics.calibration.near_foreground`), fits T and
reports the expected calibration error before and after on the same voxels. The model's
current temperature is part of "before": the new temperature is the product of the two
(``(p^(1/T0))^(1/T1) = p^(1/(T0 T1))``).

Called on out-of-fold predictions after ``medseg train --folds`` (:mod:`medseg.crossval`)
and by ``medseg calibrate`` for any model, nnU-Net folders included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import UsageError
from medseg.metrics.calibration import ECE_BINS, Reliability, near_foreground, reliability

__all__ = ["Calibration", "calibrate", "calibrate_folds", "fit_temperature", "sample_voxels"]

log = logging.getLogger(__name__)

#: Voxels at most sampled per case, and the margin (mm) around foreground they come from.
VOXELS_PER_CASE = 200_000
MARGIN_MM = 5.0
#: The temperatures searched (a bounded 1D search on log T).
T_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the calibration it gives.

    Attributes
    ----------
    temperature : the model's new temperature (its old one times the fitted factor).
    factor : the fitted factor on the probabilities as they were predicted.
    before, after : reliability curves on the sampled voxels (ECE: ``.ece``).
    voxels, cases : how many voxels of how many cases the fit used.
    """

    temperature: float
    factor: float
    before: Reliability
    after: Reliability
    voxels: int
    cases: int

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "factor": self.factor,
                "ece_before": self.before.ece, "ece_after": self.after.ece,
                "bins": len(self.before.counts), "margin_mm": MARGIN_MM,
                "voxels": self.voxels, "cases": self.cases,
                "reliability_before": self.before.to_dict(),
                "reliability_after": self.after.to_dict()}


def _tempered(logp: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logp / T) over axis 1, float64."""
    z = logp / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the mean negative log-likelihood of
    ``softmax(log_probabilities / T)`` for ``labels`` (N,), over :data:`T_RANGE`.

    ``log_probabilities`` (N, K): log p (or logits: the result is the same).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(log_probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise UsageError(f"fit_temperature needs log probabilities (N, K) and labels (N,) with "
                         f"N >= 1, got {z.shape} and {y.shape}")
    chosen = z[np.arange(y.size), y]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(np.mean(logsumexp(z / t, axis=1) - chosen / t))

    lo, hi = (math.log(v) for v in T_RANGE)
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x))


def sample_voxels(probabilities: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float],
                  rng: np.random.Generator, limit: int = VOXELS_PER_CASE,
                  margin_mm: float = MARGIN_MM) -> tuple[np.ndarray, np.ndarray]:
    """(log p (N, K) float32, labels (N,)) of at most ``limit`` foreground-near voxels of one
    case, drawn without replacement by ``rng``; probabilities (K, x, y, z), truth (x, y, z)."""
    p = np.asarray(probabilities)
    predicted = p.argmax(axis=0)
    index = np.flatnonzero(near_foreground(predicted, truth, spacing_mm, margin_mm))
    if index.size > limit:
        index = np.sort(rng.choice(index, limit, replace=False))
    flat = p.reshape(p.shape[0], -1)[:, index].T
    logp = np.log(np.clip(flat.astype(np.float64), 1e-30, None)).astype(np.float32)
    return logp, np.asarray(truth).ravel()[index].astype(np.int64)


def calibrate(model: Any, cases: Sequence[Any], runtime: Any = None, seed: int = 0,
              options: Any = None, progress: bool | None = None) -> Calibration:
    """Predict labelled ``cases`` (:class:`medseg.io.cases.Case` with a label) with ``model``
    (anything :func:`medseg.sources.load_model` takes), sample their foreground-near voxels
    and fit the temperature (module docstring).

    Raises
    ------
    UsageError : no labelled case, or no foreground-near voxel in any of them.
    """
    return calibrate_folds([(model, cases)], runtime, seed, options, progress)


def calibrate_folds(folds: Sequence[tuple[Any, Sequence[Any]]], runtime: Any = None,
                    seed: int = 0, options: Any = None, progress: bool | None = None
                    ) -> Calibration:
    """:func:`calibrate` over (model, its held-out cases) pairs: the out-of-fold
    probabilities of a cross-validation run, pooled into one temperature. The models must
    share their temperature (the folds of one run do)."""
    from medseg.data.cohort import read_labelled
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.runtime import Runtime
    from medseg.sources import load_model

    runtime = runtime or Runtime.resolve("auto")
    options = dataclasses.replace(options or PredictOptions(), save_probabilities=True,
                                  qc=False, uncertainty=False)
    rng = np.random.default_rng(seed)
    parts, labels, used, old = [], [], 0, 1.0
    for model, cases in folds:
        loaded = load_model(model, runtime)
        old = 1.0 if loaded.card.confidence is None else loaded.card.confidence.temperature
        for _, image, truth in read_labelled(cases, "calibrate", progress):
            probs = predict_case(loaded, image, options, runtime).probabilities
            logp, y = sample_voxels(probs.array, truth.array, truth.spacing_mm, rng)
            parts.append(logp)
            labels.append(y)
            used += 1
    if not used or not sum(len(y) for y in labels):
        raise UsageError("calibration needs labelled cases with foreground (predicted or "
                         "true) in at least one of them")
    logp, y = np.concatenate(parts).astype(np.float64), np.concatenate(labels)
    factor = fit_temperature(logp, y)
    before = reliability(np.exp(logp), y, ECE_BINS)
    after = reliability(_tempered(logp, factor), y, ECE_BINS)
    result = Calibration(old * factor, factor, before, after, int(y.size), used)
    log.info("calibration on %d voxels of %d cases: temperature %.3f (x%.3f), ECE %.4f -> %.4f",
             result.voxels, used, result.temperature, factor, before.ece, after.ece)
    return result
