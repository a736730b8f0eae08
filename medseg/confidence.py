"""What a model knows about its own reliability: the card's ``confidence`` field.

A :class:`Confidence` travels in the model card (:class:`medseg.card.ModelCard`,
``confidence``), so that quality control at prediction time needs nothing but the model:

* :class:`Cohort`: the training cohort, per label the distribution over training cases of
  the structure's volume (mL) and of its count of large connected components, and per image
  channel the distribution over cases of the intensity statistics of :func:`image_measures`,
  and the distribution of the field of view (:func:`extent_measures`, mm);
* :class:`QcThresholds`: the limits that turn a QC row into ``ok`` / ``review`` / ``fail``
  (defaults documented on the class);
* ``temperature``: the calibration temperature T (1 = none). Calibrated probabilities are
  ``p^(1/T) / sum_k p_k^(1/T)``, i.e. ``softmax(log p / T)``: for one network this is
  temperature scaling of its logits (``softmax(z / T)``), for an ensemble it scales the log of
  its combined probabilities. ``medseg predict`` applies it (:func:`temper`) to the
  probabilities on the input grid, after they are resampled from the network grid, because
  that is where :mod:`medseg.inference.calibration` fits it (nnU-Net's logits, resampled
  before their softmax, are scaled before: a linear resampling commutes with one T).
* ``label_temperatures``: label -> T_c, kept only for the labels where its own temperature
  calibrates better than the single one (:mod:`medseg.inference.calibration`). The
  formulation is *top-label* (Gupta & Ramdas 2022, "Top-label calibration and multiclass-to-
  binary reductions"): a voxel whose predicted label (the argmax) is ``c`` is scaled by T_c,
  ``softmax(log p / T_c)``, every channel of it. Within a voxel there is still one
  temperature, so calibration never moves an argmax and never changes a segmentation on the
  network grid; what changes per label is how confident the voxels predicted as that label
  are, which is what top-label reliability (:mod:`medseg.metrics.calibration`) and QC's
  estimated Dice read. (Scaling each *channel* by its own T would move argmaxes, and on
  log-probabilities it is not even the same as on logits; a one-vs-rest temperature per
  label needs a renormalisation that mixes the labels again.) :func:`label_scaled` applies
  it; the labels without an entry use ``temperature``.
* ``reference``: label -> :class:`LabelReference`, what QC's raw measures (soft Dice,
  uncertain fraction) were on the calibration cases against their true Dice: the offset that
  makes ``estimated_dice`` unbiased and the spread an uncertain fraction is judged against.
  Fitted by :func:`medseg.inference.calibration.calibrate` after the temperatures (a fixed
  threshold on either would flag every case of a calibrated model: its boundary voxels are
  honestly unsure).

The per-case measurements that build the cohort and that QC compares with it live here
too, as pure array functions (:func:`label_measures`, :func:`image_measures`), so that the
training cohort and a prediction are measured by the same code. JSON form
(``to_dict`` / ``from_dict``, exact round trip)::

    {"cohort": {"cases": 80, "modality": "MRI",
                "labels": {"1": {"volume_ml": {...Summary}, "components": {...}}},
                "image": [{"p01": {...}, "p50": {...}, "p99": {...},
                           "median_position": {...}}],
                "extent": {"extent_lr": {...}, "extent_ap": {...}, "extent_si": {...}}},
     "thresholds": {...}, "temperature": 1.0, "label_temperatures": {"1": 1.8},
     "reference": {"1": {"cases": 10, "dice_offset": 0.04, "uncertain_fraction": {...}}}}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import UsageError, check_keywords

__all__ = ["Cohort", "Confidence", "EXTENT_STATS", "IMAGE_STATS", "LabelCohort",
           "LabelReference", "QcThresholds", "Summary", "extent_measures", "image_measures",
           "label_measures", "label_scaled", "large_components", "temper"]

#: Quantiles a :class:`Summary` keeps (fractions).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

#: The image statistics of :func:`image_measures`, per channel.
IMAGE_STATS = ("p01", "p50", "p99", "median_position")

#: The field-of-view statistics of :func:`extent_measures` (mm along the world axes R-L,
#: A-P, S-I).
EXTENT_STATS = ("extent_lr", "extent_ap", "extent_si")

#: At most this many voxels enter :func:`image_measures` (an evenly strided subsample).
IMAGE_SAMPLE = 1 << 20


@dataclass(frozen=True)
class Summary:
    """The distribution of one quantity over the training cases.

    ``n`` cases, ``mean``, ``sd`` (sample, ddof=1; 0 for one case), ``min``, ``max`` and
    ``quantiles`` (:data:`QUANTILES` -> value, :func:`numpy.quantile`, linear).
    """

    n: int
    mean: float
    sd: float
    min: float
    max: float
    quantiles: Mapping[float, float] = field(default_factory=dict)

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """The summary of ``values`` (at least one finite number)."""
        x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        if x.size == 0:
            raise UsageError("a cohort summary needs at least one finite value")
        sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
        q = {p: float(v) for p, v in zip(QUANTILES, np.quantile(x, QUANTILES))}
        return cls(int(x.size), float(x.mean()), sd, float(x.min()), float(x.max()), q)

    def z(self, value: float, floor: float = 0.0) -> float:
        """``(value - mean) / max(sd, floor)``; when that scale is 0, 0 for the mean itself
        and +-inf for anything else."""
        scale = max(self.sd, floor)
        if scale > 0:
            return (value - self.mean) / scale
        return 0.0 if value == self.mean else math.copysign(math.inf, value - self.mean)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "min": self.min,
                "max": self.max, "quantiles": {str(k): v for k, v in self.quantiles.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Summary:
        q = {float(k): float(v) for k, v in dict(data.get("quantiles") or {}).items()}
        return cls(int(data["n"]), float(data["mean"]), float(data["sd"]), float(data["min"]),
                   float(data["max"]), q)


@dataclass(frozen=True)
class LabelCohort:
    """One label over the training cases: its volume (mL; 0 where absent), its large
    components (:func:`large_components`) and the fraction of cases where it is present."""

    volume_ml: Summary
    components: Summary
    present: float

    def to_dict(self) -> dict[str, Any]:
        return {"volume_ml": self.volume_ml.to_dict(), "components": self.components.to_dict(),
                "present": self.present}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelCohort:
        return cls(Summary.from_dict(data["volume_ml"]), Summary.from_dict(data["components"]),
                   float(data["present"]))


@dataclass(frozen=True)
class Cohort:
    """The training cohort a model's predictions are compared with.

    Attributes
    ----------
    cases : number of training cases measured.
    labels : label value -> :class:`LabelCohort` (foreground labels only).
    image : per image channel, statistic name (:data:`IMAGE_STATS`) -> :class:`Summary`.
    modality : the training images' modality as the manifest names it ("CT", "MRI"), if known.
    """

    cases: int
    labels: Mapping[int, LabelCohort]
    image: tuple[Mapping[str, Summary], ...]
    modality: str | None = None
    extent: Mapping[str, Summary] | None = None

    @classmethod
    def of(cls, labels: Sequence[Mapping[int, tuple[float, int]]],
           images: Sequence[Sequence[Mapping[str, float]]], label_values: Sequence[int],
           modality: str | None = None,
           extents: Sequence[Mapping[str, float]] | None = None) -> Cohort:
        """The cohort of per-case :func:`label_measures`, :func:`image_measures` and (when
        given) :func:`extent_measures`."""
        if not labels or len(labels) != len(images):
            raise UsageError(f"a cohort needs the same number (>= 1) of label and image "
                             f"measures, got {len(labels)} and {len(images)}")
        per_label = {}
        for value in label_values:
            vols = [case.get(value, (0.0, 0))[0] for case in labels]
            comps = [float(case.get(value, (0.0, 0))[1]) for case in labels]
            present = float(np.mean([v > 0 for v in vols]))
            per_label[int(value)] = LabelCohort(Summary.of(vols), Summary.of(comps), present)
        channels = len(images[0])
        image = tuple({s: Summary.of([case[c][s] for case in images]) for s in IMAGE_STATS}
                      for c in range(channels))
        extent = None if not extents else {
            s: Summary.of([case[s] for case in extents]) for s in EXTENT_STATS}
        return cls(len(labels), per_label, image, modality, extent)

    def to_dict(self) -> dict[str, Any]:
        out = {"cases": self.cases, "modality": self.modality,
               "labels": {str(k): v.to_dict() for k, v in self.labels.items()},
               "image": [{s: v.to_dict() for s, v in channel.items()} for channel in self.image]}
        if self.extent is not None:
            out["extent"] = {s: v.to_dict() for s, v in self.extent.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cohort:
        labels = {int(k): LabelCohort.from_dict(v) for k, v in dict(data["labels"]).items()}
        image = tuple({s: Summary.from_dict(v) for s, v in dict(channel).items()}
                      for channel in data["image"])
        extent = data.get("extent")
        extent = None if extent is None else {s: Summary.from_dict(v)
                                              for s, v in dict(extent).items()}
        return cls(int(data["cases"]), labels, image, data.get("modality"), extent)


@dataclass(frozen=True)
class LabelReference:
    """How QC's raw measures of one label behaved on labelled cases the model did not train
    on (the calibration cases of :func:`medseg.inference.calibration.calibrate`, measured
    with the fitted temperatures).

    Attributes
    ----------
    cases : the (case, label) rows measured (the truth or the prediction not empty).
    dice_offset : the median of (true Dice - soft Dice) over those rows: QC's
        ``estimated_dice`` is the soft Dice plus this, clipped to [0, 1] (the soft Dice of a
        calibrated model is biased low by the boundary's partial-volume probabilities).
    uncertain_fraction : the distribution of the uncertain fraction over those rows; a
        prediction is reviewed when its own lies more than ``uncertain_z_review`` SD above.
    """

    cases: int
    dice_offset: float
    uncertain_fraction: Summary

    def to_dict(self) -> dict[str, Any]:
        return {"cases": self.cases, "dice_offset": self.dice_offset,
                "uncertain_fraction": self.uncertain_fraction.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelReference:
        return cls(int(data["cases"]), float(data["dice_offset"]),
                   Summary.from_dict(data["uncertain_fraction"]))


@dataclass(frozen=True)
class QcThresholds:
    """The limits of the QC verdict (:mod:`medseg.inference.qc`); defaults in brackets.

    A row is ``fail`` when any fail limit is crossed, else ``review`` when any review limit
    is, else ``ok``.

    Attributes
    ----------
    dice_review, dice_fail : estimated Dice below which a label is reviewed [0.85] or
        failed [0.5].
    volume_z_review, volume_z_fail : |volume z| against the training volumes above which a
        label is reviewed [3] or failed [5].
    input_z_review, input_z_fail : the largest |z| of the image statistics against the
        training images above which every label of the case is reviewed [4] or failed [8].
    uncertain_review : uncertain fraction above which a label is reviewed [0.5], for a label
        without a calibration reference (:class:`LabelReference`).
    uncertain_z_review : with a reference: z of the uncertain fraction against the
        calibration cases above which a label is reviewed [3].
    absent_fail : a label predicted empty fails when at least this fraction of training
        cases holds it [0.95].
    uncertain_probability : t in [0, 0.5): a voxel is uncertain for a label when its
        probability lies in (t, 1 - t) [0.1].
    component_fraction : a connected component is *large* when it holds at least this
        fraction of its label's voxels [0.1]; a label with more large components than any
        training case is reviewed.
    margin : relative floor of the standard deviations the z scores divide by [0.05]:
        ``sd >= margin * |mean|`` for volumes, ``sd >= margin * (p99 - p01)`` of the cohort
        for intensities, ``sd >= margin`` for the median position (a cohort of a few similar
        cases would otherwise make any difference an outlier).
    """

    dice_review: float = 0.85
    dice_fail: float = 0.5
    volume_z_review: float = 3.0
    volume_z_fail: float = 5.0
    input_z_review: float = 4.0
    input_z_fail: float = 8.0
    uncertain_review: float = 0.5
    uncertain_z_review: float = 3.0
    absent_fail: float = 0.95
    uncertain_probability: float = 0.1
    component_fraction: float = 0.1
    margin: float = 0.05

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or not math.isfinite(value):
                raise UsageError(f"QC threshold {f.name} must be a finite number >= 0, "
                                 f"got {value!r}")
            object.__setattr__(self, f.name, float(value))
        if not self.uncertain_probability < 0.5:
            raise UsageError(f"uncertain_probability must be in [0, 0.5), got "
                             f"{self.uncertain_probability}")

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for logs and summaries."""
        return (f"estimated Dice review < {self.dice_review:g}, fail < {self.dice_fail:g}; "
                f"|volume z| review > {self.volume_z_review:g}, fail > {self.volume_z_fail:g}; "
                f"|input z| review > {self.input_z_review:g}, fail > {self.input_z_fail:g}; "
                f"uncertain fraction review > {self.uncertain_review:g} (with a calibration "
                f"reference: z > {self.uncertain_z_review:g})")


@dataclass(frozen=True)
class Confidence:
    """The card's ``confidence`` field: the cohort (None: not measured), the QC thresholds,
    the calibration temperature, the labels' own temperatures and the labels' QC reference
    from the calibration cases (module docstring)."""

    cohort: Cohort | None = None
    thresholds: QcThresholds = QcThresholds()
    temperature: float = 1.0
    label_temperatures: Mapping[int, float] = field(default_factory=dict)
    reference: Mapping[int, LabelReference] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", _positive(self.temperature, "temperature"))
        labels = {}
        for label, t in dict(self.label_temperatures).items():
            if isinstance(label, bool) or int(label) < 0 or int(label) != float(label):
                raise UsageError(f"label_temperatures: label {label!r} is not a label value")
            labels[int(label)] = _positive(t, f"temperature of label {label}")
        object.__setattr__(self, "label_temperatures", labels)

    def temperatures(self, num_classes: int) -> float | tuple[float, ...]:
        """T per output channel (label value = channel), or the one T when no label has its
        own (the form :func:`label_scaled` and :mod:`medseg.inference.members` take)."""
        if not any(0 <= c < num_classes for c in self.label_temperatures):
            return self.temperature
        return tuple(self.label_temperatures.get(c, self.temperature)
                     for c in range(num_classes))

    def replace(self, **changes: Any) -> Confidence:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"cohort": None if self.cohort is None else self.cohort.to_dict(),
                "thresholds": self.thresholds.to_dict(), "temperature": self.temperature,
                "label_temperatures": {str(k): v for k, v in
                                       sorted(self.label_temperatures.items())},
                "reference": {str(k): v.to_dict() for k, v in sorted(self.reference.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Confidence:
        check_keywords(data, ["cohort", "thresholds", "temperature", "label_temperatures",
                              "reference"], "model card confidence")
        cohort = data.get("cohort")
        labels = dict(data.get("label_temperatures") or {})
        try:
            labels = {int(k): v for k, v in labels.items()}
        except ValueError:
            raise UsageError(f"label_temperatures: keys must be label values, got "
                             f"{sorted(labels)}") from None
        reference = {int(k): LabelReference.from_dict(v)
                     for k, v in dict(data.get("reference") or {}).items()}
        return cls(None if cohort is None else Cohort.from_dict(cohort),
                   QcThresholds(**dict(data.get("thresholds") or {})),
                   data.get("temperature", 1.0), labels, reference)


def _positive(t: Any, what: str) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
        raise UsageError(f"{what} must be a positive number, got {t!r}")
    return float(t)


def label_scaled(values: np.ndarray, temperatures: float | Sequence[float]) -> np.ndarray:
    """``values / T[argmax(values)]`` over axis 0 of (K, ...) logits or log-probabilities
    (module docstring): a softmax of the result is the calibrated probabilities. One T
    (a number) divides everything; a new float array either way.

    Examples
    --------
    >>> label_scaled(np.array([[2.0, 0.0], [0.0, 1.0]]), (2.0, 4.0))
    array([[1.  , 0.  ],
           [0.  , 0.25]])
    """
    values = np.asarray(values)
    if np.ndim(temperatures) == 0:
        return values / float(temperatures)
    t = np.asarray(temperatures, dtype=values.dtype if values.dtype.kind == "f" else None)
    if t.shape != (values.shape[0],):
        raise UsageError(f"{t.size} temperatures for {values.shape[0]} channels")
    return values / t[np.argmax(values, axis=0)][None]


def temper(probabilities: np.ndarray, temperatures: float | Sequence[float]) -> np.ndarray:
    """Calibrated probabilities (K, ...): ``softmax(log p / T)`` over axis 0, T the one
    temperature or that of each voxel's predicted label (:func:`label_scaled`); a new array
    of the input's dtype (computed in float32), or ``probabilities`` itself when T is 1.

    >>> temper(np.array([0.8, 0.2], np.float32), 2.0).round(4)  # sqrt(0.8) : sqrt(0.2)
    array([0.6667, 0.3333], dtype=float32)
    """
    p = np.asarray(probabilities)
    if np.ndim(temperatures) == 0 and float(temperatures) == 1.0:
        return p
    z = label_scaled(np.log(np.clip(p.astype(np.float32), 1e-30, None)), temperatures)
    z -= z.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z.astype(p.dtype, copy=False)


# -- measurements (the cohort's and a prediction's) ------------------------------------------
def large_components(mask: np.ndarray, fraction: float) -> int:
    """Connected components (26-connectivity) of ``mask`` (x, y, z) holding at least
    ``fraction`` of its voxels (0 for an empty mask)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return 0
    sizes = np.bincount(labelled.ravel())[1:]
    return int(np.count_nonzero(sizes >= fraction * sizes.sum()))


def label_measures(labels: np.ndarray, voxel_ml: float, values: Sequence[int],
                   component_fraction: float = QcThresholds.component_fraction
                   ) -> dict[int, tuple[float, int]]:
    """Per label value: (volume in mL, large components) of a label map (x, y, z).

    ``voxel_ml``: the volume of one voxel in mL (1 mL = 1000 mm^3).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(values, default=0) + 1)
    out = {}
    for value in values:
        n = int(counts[value])
        comps = large_components(labels == value, component_fraction) if n else 0
        out[int(value)] = (n * voxel_ml, comps)
    return out


def extent_measures(affine: np.ndarray, shape: Sequence[int]) -> dict[str, float]:
    """The field of view of an image: the size in mm of its box of voxels along each world
    axis (:data:`EXTENT_STATS`), ``sum_j |A[i, j]| * shape[j]`` for the 3 x 3 part ``A`` of
    the affine (voxel axes (x, y, z) -> world mm); for an oblique image, the box's extent.

    Examples
    --------
    >>> extent_measures(np.diag([0.5, 0.5, 2.0, 1.0]), (100, 200, 30))
    {'extent_lr': 50.0, 'extent_ap': 100.0, 'extent_si': 60.0}
    """
    size = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3]) @ np.asarray(shape[-3:],
                                                                              dtype=np.float64)
    return {name: float(v) for name, v in zip(EXTENT_STATS, size)}


def image_measures(array: np.ndarray, channels: bool) -> list[dict[str, float]]:
    """Intensity statistics per channel of an image (C, x, y, z) or (x, y, z) (``channels``).

    Over an evenly strided subsample of at most :data:`IMAGE_SAMPLE` voxels (deterministic):
    the 1st, 50th and 99th percentiles ``p01``, ``p50``, ``p99`` (the image's units) and
    ``median_position = (p50 - p01) / (p99 - p01)`` (0.5 for a constant image), which does not
    change with the intensity scale (MRI) but flips under an inversion.
    """
    array = np.asarray(array)
    planes = array if channels else array[None]
    out = []
    for plane in planes:
        flat = plane.ravel()
        flat = flat[:: max(1, flat.size // IMAGE_SAMPLE)].astype(np.float64)
        p01, p50, p99 = (float(v) for v in np.percentile(flat, [1, 50, 99]))
        span = p99 - p01
        out.append({"p01": p01, "p50": p50, "p99": p99,
                    "median_position": (p50 - p01) / span if span > 0 else 0.5})
    return out
