"""``predict_case`` / ``predict_volume``: one image in, its label map out, on exactly its grid.

``predict_case`` reads as its steps: check -> preprocess -> window -> restore ->
postprocess. Everything the model needs comes from its
:class:`~medseg.card.ModelCard` (preprocessing, window settings, labels,
post-processing); :class:`PredictOptions` holds the choices of one run and
may override the card's window and post-processing; the
:class:`~medseg.runtime.Runtime` says where and in which precision the
network runs::

    Volume (x, y, z) | (C, x, y, z)  --Preprocessing.apply-->  (C, x', y', z') float32 + history
        --sliding window (card.window)-->  LabelMap (x', y', z') | Probabilities (K, x', y', z')
        --history.restore_labels / history.invert-->  on the input grid (same shape and affine)
        --card.postprocess-->  labels

The network's output type decides how it returns to the input grid:

* when the preprocessing resamples (``label_interp="linear"``, the default), the
  network gives Probabilities, interpolated back and reduced to labels slab by
  slab (nnU-Net's way; never (K, x, y, z) on the input grid);
* no resampling, ``label_interp="nearest"``, or probabilities over
  :data:`PROBABILITY_BUDGET_BYTES`: the window outputs are reduced to a LabelMap
  slab by slab (never a full (K, x', y', z') array) and mapped back by nearest
  neighbour;
* ``save_probabilities``: the Probabilities are inverted in full (linear) and
  the labels are their argmax on the input grid;
* a preprocessing whose outputs return as logits (``resamples_logits``: nnU-Net's, whose
  export resamples logits before their softmax) keeps the window's blended logits as
  :class:`~medseg.volume.Logits`; its History resamples them with nnU-Net's rule and
  activates them, slab by slab for labels, so that the outputs are nnUNetPredictor's.

Nothing here asks where a model came from: the card's typed preprocessing, its window
settings (``blend="nnunet"`` selects nnU-Net's window arithmetic) and the LoadedModel's
``combine`` rule decide. An ensemble combines its members as that rule says
(:data:`medseg.sources.COMBINES`): ``mean_softmax`` (medseg's fold runs: per window batch,
the mean over members of softmax(logits), so the window blends probabilities and no
softmax follows) or ``mean_logits`` (nnU-Net's folds: each member's whole window, float16
logits summed and divided); one network's logits are blended and then softmaxed (or kept
as Logits), as they always were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from medseg.argmax import label_dtype
from medseg.card import ModelCard, Postprocess, WindowSettings
from medseg.errors import UsageError, check_option
from medseg.confidence import temper
from medseg.inference.members import MemberRun, Temperatures, label_temperature
from medseg.inference.precision import Predictor, mean_softmax
from medseg.runtime import Runtime
from medseg.sources import LoadedModel, check_image, load_model
from medseg.volume import LabelMap, Logits, Probabilities, Volume

if TYPE_CHECKING:
    import numpy as np

    from medseg.inference.qc import CaseQc

__all__ = ["PROBABILITY_BUDGET_BYTES", "LoadedModel", "PredictOptions", "Prediction",
           "predict_case", "predict_volume"]

log = logging.getLogger(__name__)

ALL_AXES = (0, 1, 2)
OUTPUTS = ("labels", "probabilities")
LABEL_INTERPS = ("linear", "nearest")

#: Largest (K, x', y', z') float32 probability array on the network grid that the label
#: path keeps in order to interpolate probabilities back to the input grid (nnU-Net's way);
#: above it labels come back by nearest neighbour from the slab-wise argmax.
PROBABILITY_BUDGET_BYTES = 4 << 30


@dataclass(frozen=True)
class PredictOptions:
    """The choices of one prediction run; None keeps the model card's setting.

    Attributes
    ----------
    overlap : window overlap in [0, 1) (default: the card's).
    batch_size : windows per network call (default: the card's).
    tta : mirroring test-time augmentation: True mirrors the card's ``mirror_axes``
        (all three axes when the card has none), False none; None as the card says.
    keep_largest : True: also keep only the largest connected component of every label
        (the card's other steps stay); False: no largest-component step at all (nor an
        imported nnU-Net model's ``largest_of``; minimum sizes stay); None: as the card says.
    save_probabilities : also return the (K, x, y, z) softmax probabilities on the
        input grid (K x the image's voxels x 4 bytes; labels are then their argmax).
    label_interp : ``"linear"`` (default: interpolate class probabilities when the
        preprocessing resampled, as nnU-Net does) or ``"nearest"`` (map the network's
        label map back by nearest neighbour: least memory and time, blocky at a coarser
        network spacing). An imported nnU-Net model takes nnU-Net's export: linear only.
    progress : tqdm bar over windows.
    qc : also measure how far to trust each label (:mod:`medseg.inference.qc`): the
        members (an ensemble's networks, or the mirrorings of one network; one extra
        mirrored pass when mirroring is off) run one by one and ``Prediction.qc`` holds one
        row per label. The labels are the plain prediction's (to float rounding).
    uncertainty : also return the uncertainty map (2, x, y, z) float16 on the input grid
        (the entropy of the members' mean probabilities, and their disagreement).
    backend : where the networks run (:mod:`medseg.inference.backends`): ``"torch"``
        (default), ``"onnxruntime"`` (an ONNX export in ONNX Runtime, CPU, fp32),
        ``"openvino"`` (the ONNX export in OpenVINO, CPU, the runtime's fp32 or bf16) or
        ``"auto"`` (the fastest installed for the device: OpenVINO, then torch, on the CPU).
    """

    overlap: float | None = None
    batch_size: int | None = None
    tta: bool | None = None
    keep_largest: bool | None = None
    save_probabilities: bool = False
    label_interp: str = "linear"
    progress: bool = False
    qc: bool = False
    uncertainty: bool = False
    backend: str = "torch"

    @property
    def confidence(self) -> bool:
        """Whether the members run one by one (QC or the uncertainty map asked for)."""
        return self.qc or self.uncertainty

    def __post_init__(self) -> None:
        from medseg.inference.backends import BACKENDS

        check_option(self.label_interp, LABEL_INTERPS, "label_interp")
        check_option(self.backend, BACKENDS, "backend")
        WindowSettings(1).replace(overlap=self.overlap, batch_size=self.batch_size)  # checks

    def apply(self, card: ModelCard) -> ModelCard:
        """The card as this run uses it: window and post-processing overridden."""
        window = card.window.replace(overlap=self.overlap, batch_size=self.batch_size)
        if self.tta is not None:
            axes = (card.window.mirror_axes or ALL_AXES) if self.tta else ()
            window = dataclasses.replace(window, mirror_axes=axes)
        post = card.postprocess
        if self.keep_largest:  # every label's largest component, beside the card's steps
            post = dataclasses.replace(post, keep_largest=True)
        elif self.keep_largest is not None:  # no largest-component step of any kind
            post = dataclasses.replace(post, keep_largest=False, largest_of=())
        return card.replace(window=window, postprocess=post)


@dataclass
class Prediction:
    """Result of :func:`predict_case`.

    Attributes
    ----------
    labels : LabelMap (x, y, z) on exactly the input grid (same spatial shape and
        affine), in :func:`medseg.argmax.label_dtype`; ``meta`` is the input's.
    probabilities : Probabilities (K, x, y, z) float32 on the input grid (channel 0 =
        background), or None unless requested.
        Calibrated when the card holds a temperature (:mod:`medseg.confidence`).
    timings_s : wall seconds of ``preprocess``, ``network``, ``invert`` (and
        ``postprocess`` and ``qc`` when there are any).
    qc : with ``PredictOptions(qc=True)`` or ``uncertainty=True``: the QC rows (one per
        foreground label, :data:`medseg.inference.qc.QC_COLUMNS` but ``case``) and the
        uncertainty map; else None.
    """

    labels: LabelMap
    probabilities: Probabilities | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    qc: CaseQc | None = None


def predict_volume(model: Any, volume: Volume, output: str = "labels",
                   options: PredictOptions | None = None,
                   runtime: Runtime | None = None) -> Volume:
    """Segment one image into a Volume on exactly the input's grid (same shape and affine).

    ``output="labels"`` (default) gives the LabelMap (x, y, z) computed on the
    memory-bounded path; ``output="probabilities"`` the softmax Probabilities
    (K, x, y, z) float32 (channel 0 = background). The other parameters are those of
    :func:`predict_case`, which also returns both outputs at once and the step timings.
    """
    check_option(output, OUTPUTS, "output")
    if output == "probabilities":
        options = dataclasses.replace(options or PredictOptions(), save_probabilities=True)
    result = predict_case(model, volume, options, runtime)
    return result.labels if output == "labels" else result.probabilities


def predict_case(model: Any, volume: Volume, options: PredictOptions | None = None,
                 runtime: Runtime | None = None) -> Prediction:
    """Segment one image; the label map has exactly the input's shape and affine.

    Parameters
    ----------
    model : a checkpoint path (``.safetensors``), a loaded
        :class:`medseg.checkpoint.Checkpoint`, a
        :class:`medseg.sources.LoadedModel` (a module and its card), ``"nnunet:FOLDER"``,
        or an ensemble: a cross-validation run folder or a list of these (anything
        :func:`medseg.sources.load_model` takes).
    volume : image Volume (x, y, z) or (C, x, y, z), any numeric dtype (CT in HU).
    options : :class:`PredictOptions` (default: as the card says).
    runtime : device and precision (default ``Runtime.resolve("auto")``: CUDA when
        available, fp32 on the CPU; see :mod:`medseg.runtime`).

    Returns
    -------
    :class:`Prediction` with ``labels`` (and ``probabilities`` when requested).

    Raises
    ------
    DataError : the image's channel count differs from the card's, or it holds NaN/inf.
    CheckpointError : unreadable or incompatible checkpoint.
    """
    options = options or PredictOptions()
    runtime = runtime or Runtime.resolve("auto")
    loaded = load_model(model, runtime)
    check_image(volume, loaded)
    card = options.apply(loaded.card)
    if card.preprocessing.resamples_logits and options.label_interp != "linear":
        raise UsageError(f"label_interp={options.label_interp!r}: this model's labels come "
                         "back through its logits, interpolated linearly and then activated "
                         "(nnU-Net's export); leave label_interp at 'linear'")
    timer = _Timer()
    with timer("preprocess"):
        prepared = _preprocess(volume, card, runtime)
    with timer("network"):
        if options.confidence:
            output, members, predicted = _members(loaded, prepared, card, options, runtime)
        else:
            output = _window(loaded, prepared, card, options, runtime)
    with timer("invert"):
        labels, probabilities = _restore(output, prepared.history, volume, card, options,
                                         runtime)
    if card.postprocess.active:
        with timer("postprocess"):
            labels = _postprocess(labels, card.postprocess)
    case_qc = None
    if options.confidence:
        with timer("qc"):
            case_qc = _confidence(members, predicted, prepared.history, volume, labels, card,
                                  options, runtime)
    return Prediction(labels, probabilities, timer.seconds, case_qc)


# -- the steps -------------------------------------------------------------------------------
def _preprocess(volume: Volume, card: ModelCard, runtime: Runtime):  # -> Preprocessed
    device = runtime.device if runtime.device.type == "cuda" else None
    prepared = card.preprocessing.apply(volume, None, device=device)
    log.debug("preprocessed %s -> %s", volume.shape, prepared.image.shape)
    return prepared


def _window(loaded: LoadedModel, prepared, card: ModelCard, options: PredictOptions,
            runtime: Runtime) -> LabelMap | Probabilities | Logits:
    """The network over the preprocessed image, on the network grid: Logits when the
    preprocessing takes them back (``resamples_logits``), Probabilities when they are needed
    (saved, or interpolated back), else the slab-wise LabelMap."""
    from medseg.inference.sliding_window import sliding_window_argmax
    from medseg.transforms.resample import as_tensor

    image = as_tensor(prepared.image.array)[None]  # any memory order: windows are gathered
    k = card.num_classes
    logits = card.preprocessing.resamples_logits
    probabilities = (logits or options.save_probabilities
                     or _interpolate(prepared.history, image, k, options))
    estimate = _log_memory_estimate(image, k, card.window, probabilities, runtime)
    kwargs = {"device": runtime.device, "out_device": _out_device(runtime.device, estimate),
              "progress": options.progress}
    affine = prepared.image.affine
    with torch.inference_mode():
        if probabilities:
            blended, gives_probabilities = _blend(loaded, image, card, options, runtime,
                                                  kwargs)
            if logits:
                out: LabelMap | Probabilities | Logits = _scaled_logits(blended, card, affine)
            else:  # calibrated on the input grid (_restore)
                blended = blended.float()
                if not gives_probabilities:
                    blended = _softmax_(blended)
                out = Probabilities(blended.cpu().numpy(), affine)
        else:
            predictor, _ = _predictor(loaded, card, options, runtime)
            labels = sliding_window_argmax(predictor, image, card.window, **kwargs)[0]
            out = LabelMap(labels.cpu().numpy().astype(label_dtype(k), copy=False), affine)
    _sync(runtime.device)
    return out


def _members(loaded: LoadedModel, prepared, card: ModelCard, options: PredictOptions,
             runtime: Runtime) -> tuple[Probabilities | Logits, MemberRun, torch.Tensor]:
    """The members one by one (:func:`medseg.inference.members.run_members`): the network
    output as :func:`_window` gives it with probabilities (uncalibrated:
    :func:`_restore` calibrates them), what the members
    kept, and the predicted labels (x', y', z') on the network grid."""
    from medseg.inference.members import run_members
    from medseg.transforms.resample import as_tensor

    if card.preprocessing.resamples_logits and getattr(
            prepared.history.activation, "regions_class_order", None) is not None:
        raise UsageError("QC and uncertainty maps need exclusive classes (a softmax); this "
                         "model is region-based (a sigmoid per region)")
    image = as_tensor(prepared.image.array)[None]
    estimate = _log_memory_estimate(image, card.num_classes, card.window, True, runtime)
    kwargs = {"device": runtime.device, "out_device": _out_device(runtime.device, estimate),
              "progress": options.progress}
    with torch.inference_mode():
        run = run_members(_member_predictors(loaded, card, options, runtime), loaded.combine,
                          image, card.window, _temperature(card), kwargs)
        predicted = run.combined.argmax(dim=0)
        affine = prepared.image.affine
        if run.is_logits and card.preprocessing.resamples_logits:
            out: Probabilities | Logits = _scaled_logits(run.combined, card, affine)
        elif run.is_logits:  # calibrated on the input grid (_restore)
            out = Probabilities(_softmax_(run.combined.float()).cpu().numpy(), affine)
        else:
            out = Probabilities(run.combined.cpu().numpy(), affine)
    run.combined = torch.zeros(0)  # no longer needed: free it
    _sync(runtime.device)
    return out, run, predicted


def _confidence(run: MemberRun, predicted: torch.Tensor, history, volume: Volume,
                labels: LabelMap, card: ModelCard, options: PredictOptions,
                runtime: Runtime) -> CaseQc:
    """QC rows and the uncertainty map of one case (:mod:`medseg.inference.qc`)."""
    from medseg.confidence import Confidence
    from medseg.inference.qc import CaseQc, grid_measures, qc_rows, uncertainty_volume

    result = CaseQc()
    if options.qc:
        th = (card.confidence or Confidence()).thresholds
        foreground = [v for v in card.labels if v != 0]
        grid = grid_measures(run.mean_probabilities, predicted, foreground,
                             th.uncertain_probability)
        result.rows = qc_rows(volume, labels, grid, card.labels, card.confidence)
    if options.uncertainty:
        device = runtime.device if runtime.device.type == "cuda" else None
        result.uncertainty = uncertainty_volume(run, history, volume, device)
    return result


def _scaled_logits(values: torch.Tensor, card: ModelCard, affine: np.ndarray) -> Logits:
    """Logits (K, x', y', z') on the network grid divided by the card's temperature: logits
    are resampled linearly before their softmax, and one T commutes with that (nnU-Net's
    ``resamples_logits``; medseg's probabilities are tempered on the input grid instead,
    :func:`_restore`)."""
    temperature = _temperature(card)
    if temperature != 1.0:
        values = values.div_(label_temperature(values, temperature))
    return Logits(values.cpu().numpy(), affine)


def _temperature(card: ModelCard) -> Temperatures:
    """The card's calibration temperature (1: none), or one per channel where labels have
    their own (:meth:`medseg.confidence.Confidence.temperatures`)."""
    if card.confidence is None:
        return 1.0
    return card.confidence.temperatures(card.num_classes)


def _blend(loaded: LoadedModel, image: torch.Tensor, card: ModelCard, options: PredictOptions,
           runtime: Runtime, kwargs: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """The blended window output (K, x', y', z') and whether it holds probabilities.

    ``mean_logits`` ensembles run each member's whole window and average the outputs in
    their dtype (float16 under nnU-Net's arithmetic: the sum, then the division, as
    nnUNetPredictor averages folds); everything else is one window over
    :func:`_predictor`.
    """
    from medseg.inference.sliding_window import sliding_window

    if loaded.combine == "mean_logits" and loaded.is_ensemble:
        total = None
        for member in _member_predictors(loaded, card, options, runtime):
            out = sliding_window(member, image, card.window, **kwargs)[0]
            total = out if total is None else total.add_(out)
        return total.div_(len(loaded.networks)), False  # type: ignore[union-attr]
    predictor, gives_probabilities = _predictor(loaded, card, options, runtime)
    return sliding_window(predictor, image, card.window, **kwargs)[0], gives_probabilities


def _member_predictors(loaded: LoadedModel, card: ModelCard, options: PredictOptions,
                       runtime: Runtime) -> list[Predictor]:
    """Each network's logits predictor on the backend the options choose."""
    from medseg.inference.backends import member_predictors

    return member_predictors(loaded.networks, runtime, options.backend, card.in_channels,
                             card.window.roi_size)


def _predictor(loaded: LoadedModel, card: ModelCard, options: PredictOptions,
               runtime: Runtime) -> tuple[Predictor, bool]:
    """The sliding window's predictor, and whether it returns probabilities.

    One network: its logits (blended, then softmax: single-model outputs as they always
    were). A ``mean_softmax`` ensemble: the mean of its members' softmax per window batch,
    so what is blended are probabilities and no softmax follows.
    """
    members = _member_predictors(loaded, card, options, runtime)
    if loaded.is_ensemble:
        return mean_softmax(members), True
    return members[0], False


def _restore(output: LabelMap | Probabilities | Logits, history, volume: Volume,
             card: ModelCard, options: PredictOptions, runtime: Runtime
             ) -> tuple[LabelMap, Probabilities | None]:
    """Labels (and kept probabilities) on exactly the input grid, with the input's meta.

    Probabilities come back uncalibrated and are calibrated here, on the input grid, where
    :func:`medseg.inference.calibration.calibrate` fits the temperature: tempering before
    the linear resampling gives other probabilities (up to 0.07 apart on the left atrium's
    boundary voxels, ECE 0.018 against the fitted 0.015). Labels do not depend on it (a
    temperature keeps each voxel's argmax)."""
    device = runtime.device if runtime.device.type == "cuda" else None
    if options.save_probabilities:
        probs = history.invert(output, device)
        labels = history.labels_of(probs)
        array = probs.array
        if isinstance(output, Probabilities):
            array = temper(array, _temperature(card))
        return (LabelMap(labels.array, volume.affine, volume.meta),
                type(probs)(array, volume.affine, volume.meta))
    labels = history.restore_labels(output, device)
    return LabelMap(labels.array, volume.affine, volume.meta), None


def _postprocess(labels: LabelMap, post: Postprocess) -> LabelMap:
    from medseg.inference.postprocess import apply_postprocess

    return labels.with_array(apply_postprocess(labels.array, post, labels.spacing_mm))


# -- helpers ---------------------------------------------------------------------------------
def _interpolate(history, image: torch.Tensor, num_classes: int, options: PredictOptions
                 ) -> bool:
    """Whether labels come back by interpolating probabilities (module docstring)."""
    if options.label_interp == "nearest" or not history.resamples:
        return False
    need = num_classes * image[0, 0].numel() * 4
    if need <= PROBABILITY_BUDGET_BYTES:
        return True
    log.info("label map back to the input grid by nearest neighbour: interpolating "
             "probabilities needs %.1f GiB (budget %.0f GiB)", need / 2**30,
             PROBABILITY_BUDGET_BYTES / 2**30)
    return False


def _log_memory_estimate(image: torch.Tensor, num_classes: int, window: WindowSettings,
                         probabilities: bool, runtime: Runtime) -> int:
    """Log (and return) the sliding window's pre-flight peak-memory estimate in bytes."""
    from medseg.inference.memory import estimate_peak_memory, format_bytes

    value = estimate_peak_memory(
        tuple(image.shape), num_classes, window.roi_size, batch_size=window.batch_size,
        output="probabilities" if probabilities else "labels", overlap=window.overlap,
        mirror=bool(window.mirror_axes),
    )
    level = logging.INFO if value >= 1 << 30 else logging.DEBUG  # only worth a line when large
    log.log(level, "sliding window on %s, %d classes (%s): about %s at peak, on %s",
            "x".join(map(str, image.shape[2:])), num_classes,
            "probabilities" if probabilities else "slab-wise argmax", format_bytes(value),
            runtime)
    return value


def _out_device(device: torch.device, estimate: int) -> torch.device:
    """Stitch on the GPU when the estimate fits in half its free memory, else on the CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if estimate < free // 2:
        return device
    log.info("stitching on the CPU: estimate does not fit half the free GPU memory (%d MiB)",
             free // 2**20)
    return torch.device("cpu")


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over channels (dim 0) in place: temporaries of one channel, not K."""
    logits.sub_(logits.max(dim=0, keepdim=True).values).exp_()
    return logits.div_(logits.sum(dim=0, keepdim=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Wall seconds of named steps: ``with timer("network"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start

