"""Temperature scaling: fitting the card's temperature(s) on labelled cases.

Fitting is separate from applying (as scikit-learn's ``calibration`` module keeps them):
:func:`fit_temperature` finds the T that minimises the negative log-likelihood of
``softmax(log p / T)`` over the sampled voxels (Guo et al. 2017; for one network this is
temperature scaling of its logits), each case on its own, and takes the median of the
cases' temperatures: pooled voxels let one failing case decide (on the left atrium one case
of Dice 0.77 alone wants T 3.07 where the others want 1.1-2.0, and the pooled fit of 1.65
left held-out cases underconfident). Leave-one-case-out on the 13 calibration cases of the
left-atrium hour model, the ECE of the case left out fell to 0.87 of its uncalibrated value
on average with the median (0.33 median of cases), against 1.22 (0.57) with the pooled fit.
Prediction applies the card's T
(:mod:`medseg.confidence`). :func:`calibrate` predicts labelled cases with a model, samples
foreground-near voxels (:func:`medseg.metrics.calibration.near_foreground`), fits T and
reports the expected calibration error before and after on the same voxels. The model's
current temperature is part of "before": the new temperature is the product of the two
(``(p^(1/T0))^(1/T1) = p^(1/(T0 T1))``).

A temperature per label, where it helps (:func:`choose_label_temperatures`): the voxels
predicted as label ``c`` get their own T_c (top-label, :mod:`medseg.confidence`). Whether
T_c is kept is decided on voxels it was not fitted on: the sampled voxels are split in two
(by case, even and odd cases, when there are two or more; else at random), T and every T_c
are fitted on one half, and T_c is kept when, on the other half's voxels predicted ``c``,
it lowers the mean negative log-likelihood against T by more than twice the standard error
of the paired per-voxel difference (NLL: a proper score, less noisy than the binned ECE). The
kept T_c and T are then refitted on all voxels, and all T_c are dropped again when with them
the expected calibration error on those voxels is higher than with T alone (on the left
atrium, a kept T_c that won on NLL raised the ECE of the calibration voxels, 0.0079 against
0.0072, and of held-out cases, 0.015 against 0.011).

QC's reference (:func:`qc_reference`): with the new temperatures in place, the same cases
are predicted once more with QC, exactly as ``medseg predict --qc`` does, and per label the
median gap between true and soft Dice (QC's ``estimated_dice`` offset) and the spread of the
uncertain fraction are stored in the card (:class:`medseg.confidence.LabelReference`): what
QC's verdict then judges a new prediction against, instead of fixed absolute limits.

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

from medseg.confidence import Confidence, LabelReference, label_scaled
from medseg.errors import UsageError
from medseg.metrics.calibration import (
    ECE_BINS,
    MARGIN_MM,
    Reliability,
    near_foreground,
    reliability,
)

__all__ = ["Calibration", "LabelChoice", "calibrate", "calibrate_folds", "split_halves",
           "choose_label_temperatures", "fit_temperature", "qc_reference", "sample_voxels"]

log = logging.getLogger(__name__)

#: Voxels at most sampled per case (from within MARGIN_MM of foreground).
VOXELS_PER_CASE = 200_000
#: The temperatures searched (a bounded 1D search on log T).
T_RANGE = (0.05, 20.0)
#: A label gets its own temperature only with at least this many voxels predicted as it in
#: each half of the split.
MIN_LABEL_VOXELS = 500
#: A case has its own say in the median temperature with at least this many sampled voxels
#: (of the label, for a label's own temperature).
MIN_CASE_VOXELS = 100


@dataclass(frozen=True)
class LabelChoice:
    """Whether one label got its own temperature (module docstring).

    Attributes
    ----------
    label : the label value (= output channel).
    fit_voxels, held_out_voxels : voxels predicted as it in the fitting and held-out halves.
    factor : its own temperature factor fitted on all its voxels (NaN: too few voxels).
    nll_single, nll_label : mean NLL (nats) of its held-out voxels under the single factor
        and under its own, both fitted on the other half (NaN: too few voxels).
    kept : whether ``factor`` replaces the single one for this label.
    """

    label: int
    fit_voxels: int
    held_out_voxels: int
    factor: float
    nll_single: float
    nll_label: float
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Calibration:
    """Fitted temperatures and the calibration they give.

    Attributes
    ----------
    temperature : the model's new temperature (its old one times the fitted factor).
    factor : the fitted factor on the probabilities as they were predicted.
    before, after : reliability curves on the sampled voxels (ECE: ``.ece``); ``after``
        with the label temperatures that were kept.
    voxels, cases : how many voxels of how many cases the fit used.
    label_temperatures : the model's new label temperatures (label -> T; the labels whose
        T differs from ``temperature``).
    labels : per label, the choice of its own temperature (:class:`LabelChoice`).
    single : reliability with ``factor`` alone (equal to ``after`` when no label kept its own).
    reference : per label, QC's measures on the same cases under the new temperatures
        (:func:`qc_reference`).
    """

    temperature: float
    factor: float
    before: Reliability
    after: Reliability
    voxels: int
    cases: int
    label_temperatures: dict[int, float] = dataclasses.field(default_factory=dict)
    labels: tuple[LabelChoice, ...] = ()
    single: Reliability | None = None
    reference: dict[int, LabelReference] = dataclasses.field(default_factory=dict)

    def apply(self, confidence: Confidence) -> Confidence:
        """``confidence`` with these temperatures (and QC reference) in place of its own."""
        return confidence.replace(temperature=self.temperature,
                                  label_temperatures=self.label_temperatures,
                                  reference=self.reference)

    def to_dict(self) -> dict[str, Any]:
        single = self.single or self.after
        return {"temperature": self.temperature, "factor": self.factor,
                "label_temperatures": {str(k): v for k, v in self.label_temperatures.items()},
                "ece_before": self.before.ece, "ece_single": single.ece,
                "ece_after": self.after.ece,
                "bins": len(self.before.counts), "margin_mm": MARGIN_MM,
                "voxels": self.voxels, "cases": self.cases,
                "labels": [c.to_dict() for c in self.labels],
                "reference": {str(k): v.to_dict() for k, v in self.reference.items()},
                "reliability_before": self.before.to_dict(),
                "reliability_after": self.after.to_dict()}


def _tempered(logp: np.ndarray, temperature: float | Sequence[float]) -> np.ndarray:
    """softmax(logp / T) over axis 1, float64; T one number, or one per channel applied by
    each row's argmax (:func:`medseg.confidence.label_scaled`)."""
    z = label_scaled(np.asarray(logp, dtype=np.float64).T, temperature).T
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logp: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """Per-row negative log-likelihood (nats) of ``softmax(logp / T)`` for ``labels``."""
    from scipy.special import logsumexp

    z = logp / temperature
    return logsumexp(z, axis=1) - z[np.arange(labels.size), labels]


def fit_temperature(log_probabilities: np.ndarray, labels: np.ndarray,
                    cases: np.ndarray | None = None) -> float:
    """The temperature T minimising the mean negative log-likelihood of
    ``softmax(log_probabilities / T)`` for ``labels`` (N,), over :data:`T_RANGE`; with
    ``cases`` (N,) (each row's case), the median of the T each case with at least
    :data:`MIN_CASE_VOXELS` rows has on its own (module docstring), the pooled T when none
    has that many.

    ``log_probabilities`` (N, K): log p (or logits: the result is the same).
    """
    z = np.asarray(log_probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size or y.size == 0:
        raise UsageError(f"fit_temperature needs log probabilities (N, K) and labels (N,) with "
                         f"N >= 1, got {z.shape} and {y.shape}")
    if cases is not None:
        cases = np.asarray(cases).ravel()
        ids, counts = np.unique(cases, return_counts=True)
        voting = ids[counts >= MIN_CASE_VOXELS]
        if voting.size:
            return float(np.median([_nll_minimum(z[cases == c], y[cases == c])
                                    for c in voting]))
    return _nll_minimum(z, y)


def _nll_minimum(z: np.ndarray, y: np.ndarray) -> float:
    """The T of :data:`T_RANGE` minimising the mean NLL of ``softmax(z / T)`` for ``y``."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return float(np.mean(_nll(z, y, math.exp(log_t))))

    lo, hi = (math.log(v) for v in T_RANGE)
    found = minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x))


def choose_label_temperatures(log_probabilities: np.ndarray, labels: np.ndarray,
                              held_out: np.ndarray, cases: np.ndarray | None = None
                              ) -> tuple[float, dict[int, float], tuple[LabelChoice, ...]]:
    """The single temperature factor and the labels' own factors where they help (module
    docstring), fitted on rows (N, K) of log p with true ``labels`` (N,); ``held_out`` (N,)
    bool marks the half that decides; ``cases`` (N,), each row's case, makes every fit the
    median of the cases' own (:func:`fit_temperature`).

    Returns (T on all rows, {label: T_c on all its rows} of the kept labels, the choices).
    """
    z = np.asarray(log_probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    held_out = np.asarray(held_out, dtype=bool)
    predicted = z.argmax(axis=1)
    g = None if cases is None else np.asarray(cases).ravel()

    def fitted(rows: np.ndarray) -> float:
        return fit_temperature(z[rows], y[rows], None if g is None else g[rows])

    fit = ~held_out
    single_fit = fitted(fit) if fit.any() else math.nan
    kept, choices = {}, []
    for c in range(z.shape[1]):
        a, b = fit & (predicted == c), held_out & (predicted == c)
        n_fit, n_held = int(a.sum()), int(b.sum())
        nll_single = nll_label = factor = math.nan
        keep = False
        if min(n_fit, n_held) >= MIN_LABEL_VOXELS:
            own = fitted(a)
            diff = _nll(z[b], y[b], own) - _nll(z[b], y[b], single_fit)
            nll_label = float(np.mean(_nll(z[b], y[b], own)))
            nll_single = nll_label - float(diff.mean())
            keep = bool(diff.mean() + 2 * diff.std(ddof=1) / math.sqrt(diff.size) < 0)
            factor = fitted(predicted == c)
            if keep:
                kept[c] = factor
        choices.append(LabelChoice(c, n_fit, n_held, factor, nll_single, nll_label, keep))
    return fit_temperature(z, y, g), kept, tuple(choices)


def split_halves(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The held-out half (bool (N,)) of rows from cases ``groups`` (N,) (case indices): the
    odd cases when there are two or more, else every row with probability 1/2."""
    groups = np.asarray(groups)
    if np.unique(groups).size >= 2:
        return groups % 2 == 1
    return rng.random(groups.size) < 0.5


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
              options: Any = None, progress: bool | None = None,
              reference: bool = True) -> Calibration:
    """Predict labelled ``cases`` (:class:`medseg.io.cases.Case` with a label) with ``model``
    (anything :func:`medseg.sources.load_model` takes), sample their foreground-near voxels
    and fit the temperature (module docstring); then, unless ``reference`` is False, measure
    QC's reference under it (:func:`qc_reference`: one more prediction per case).

    Raises
    ------
    UsageError : no labelled case, or no foreground-near voxel in any of them.
    """
    return calibrate_folds([(model, cases)], runtime, seed, options, progress, reference)


def calibrate_folds(folds: Sequence[tuple[Any, Sequence[Any]]], runtime: Any = None,
                    seed: int = 0, options: Any = None, progress: bool | None = None,
                    reference: bool = True) -> Calibration:
    """:func:`calibrate` over (model, its held-out cases) pairs: the out-of-fold
    probabilities of a cross-validation run, pooled into one temperature. The models must
    share their temperature (the folds of one run do)."""
    from medseg.data.cohort import read_labelled
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.runtime import Runtime
    from medseg.sources import load_model

    runtime = runtime or Runtime.resolve("auto")
    options = options or PredictOptions()
    fit_options = dataclasses.replace(options, save_probabilities=True, qc=False,
                                      uncertainty=False)
    rng = np.random.default_rng(seed)
    parts, labels, groups, old = [], [], [], None
    loaded_folds = [(load_model(model, runtime), cases) for model, cases in folds]
    for loaded, cases in loaded_folds:
        old = loaded.card.confidence or Confidence()
        for _, image, truth in read_labelled(cases, "calibrate", progress):
            probs = predict_case(loaded, image, fit_options, runtime).probabilities
            logp, y = sample_voxels(probs.array, truth.array, truth.spacing_mm, rng)
            parts.append(logp)
            labels.append(y)
            groups.append(np.full(y.size, len(groups)))
    if not groups or not sum(len(y) for y in labels):
        raise UsageError("calibration needs labelled cases with foreground (predicted or "
                         "true) in at least one of them")
    logp, y = np.concatenate(parts).astype(np.float64), np.concatenate(labels)
    cases = np.concatenate(groups)
    factor, own, choices = choose_label_temperatures(logp, y, split_halves(cases, rng), cases)
    result = _unless_worse(_calibration(logp, y, old, factor, own, choices, len(groups)),
                           logp, y, old)
    if reference:
        result = dataclasses.replace(result, reference=qc_reference(
            loaded_folds, result.apply(old), runtime, options, progress))
    log.info("calibration on %d voxels of %d cases: temperature %.3f (x%.3f), ECE %.4f -> "
             "%.4f (single temperature: %.4f); labels with their own: %s", result.voxels,
             result.cases, result.temperature, factor, result.before.ece, result.after.ece,
             result.single.ece, result.label_temperatures or "none")
    return result


def qc_reference(folds: Sequence[tuple[Any, Sequence[Any]]], confidence: Confidence,
                 runtime: Any, options: Any = None, progress: bool | None = None
                 ) -> dict[int, LabelReference]:
    """Per label, how QC's raw measures behave on labelled cases (module docstring): each
    case is predicted with ``--qc`` exactly as ``medseg predict`` does, under ``confidence``
    (the fitted temperatures, no reference), and its final labels are scored against the
    truth. Rows where the label is in neither count nowhere.

    Parameters
    ----------
    folds : (a :class:`~medseg.sources.LoadedModel`, its labelled cases) pairs.
    confidence : the confidence to measure under (its ``reference`` is ignored).
    """
    from medseg.confidence import Summary
    from medseg.data.cohort import read_labelled
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.metrics.overlap import mask_dice

    raw = confidence.replace(reference={})
    options = dataclasses.replace(options or PredictOptions(), qc=True, uncertainty=False,
                                  save_probabilities=False)
    gaps: dict[int, list[float]] = {}
    unsure: dict[int, list[float]] = {}
    for loaded, cases in folds:
        model = dataclasses.replace(loaded, card=loaded.card.replace(confidence=raw))
        for _, image, truth in read_labelled(cases, "QC reference", progress):
            result = predict_case(model, image, options, runtime)
            for row in result.qc.rows:
                true = mask_dice(result.labels.array == row["label"],
                                 np.asarray(truth.array) == row["label"])
                if not (math.isfinite(true) and math.isfinite(row["estimated_dice"])):
                    continue
                gaps.setdefault(row["label"], []).append(true - row["estimated_dice"])
                unsure.setdefault(row["label"], []).append(row["uncertain_fraction"])
    return {label: LabelReference(len(gap), float(np.median(gap)), Summary.of(unsure[label]))
            for label, gap in sorted(gaps.items())}


def _unless_worse(result: Calibration, logp: np.ndarray, y: np.ndarray,
                  old: Confidence) -> Calibration:
    """``result``, or the same with the single temperature alone when the labels' own made
    the expected calibration error on the fitted voxels worse (NLL, which chose them, and the
    binned ECE can disagree; the ECE is what calibration is reported by)."""
    if not result.labels or result.after.ece <= result.single.ece:
        return result
    log.info("label temperatures dropped: ECE %.4f with them, %.4f with one temperature",
             result.after.ece, result.single.ece)
    choices = tuple(dataclasses.replace(c, kept=False) for c in result.labels)
    return _calibration(logp, y, old, result.factor, {}, choices, result.cases)


def _calibration(logp: np.ndarray, y: np.ndarray, old: Confidence, factor: float,
                 own: dict[int, float], choices: tuple[LabelChoice, ...],
                 cases: int) -> Calibration:
    """The :class:`Calibration` of fitted factors on top of the model's ``old``
    :class:`~medseg.confidence.Confidence` (the argmax is the same before and after, so a
    label's factors multiply)."""
    k = logp.shape[1]
    old_t = old.temperatures(k)
    old_vec = (old_t,) * k if isinstance(old_t, float) else old_t
    temperature = old.temperature * factor
    new_vec = [old_vec[c] * own.get(c, factor) for c in range(k)]
    labels = {c: t for c, t in enumerate(new_vec)
              if c in own or not math.isclose(t, temperature)}
    factors = tuple(own.get(c, factor) for c in range(k))
    before = reliability(np.exp(logp), y, ECE_BINS)
    single = reliability(_tempered(logp, factor), y, ECE_BINS)
    after = reliability(_tempered(logp, factors), y, ECE_BINS) if own else single
    return Calibration(temperature, factor, before, after, int(y.size), cases, labels,
                       choices, single)
