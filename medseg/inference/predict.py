"""``predict_volume`` / ``predict_case``: one image in, its label map out, on exactly its grid.

The steps are those of training, undone at the end::

    Volume (x, y, z) | (C, x, y, z)  --Preprocessing.apply-->  (C, x', y', z') float32
        --sliding window (roi_size voxels, overlap, Gaussian blend, optional mirror TTA)-->
    labels (x', y', z')  or  probabilities (K, x', y', z')
        --history.restore_labels / history.invert-->  on the input grid (same shape, affine)

Labels come back in one of three ways:

* the preprocessing resamples (``label_interp="linear"``, the default): softmax
  probabilities (K, x', y', z') on the network grid are interpolated back and
  reduced to labels slab by slab (nnU-Net's way; never (K, x, y, z) on the
  input grid);
* no resampling, or ``label_interp="nearest"``, or probabilities over
  :data:`PROBABILITY_BUDGET_BYTES`: the window outputs are reduced to a label
  map slab by slab (the memory-bounded path: never a full (K, x', y', z')
  array), then mapped back by nearest neighbour;
* ``save_probabilities``: probabilities are inverted in full with linear
  resampling and the labels are their argmax on the input grid.

Everything the model needs comes from its checkpoint (preprocessing,
``inference.roi_size``, ``inference.overlap``, label names, input channels).
A bare ``nn.Module`` needs the same description passed as ``checkpoint_meta``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.argmax import argmax_labels, label_dtype
from medseg.errors import CheckpointError, DataError, UsageError, check_option
from medseg.inference.precision import make_predictor
from medseg.volume import LabelMap, Probabilities, Volume

__all__ = ["Prediction", "ModelSpec", "load_model_spec", "predict_case", "predict_volume",
           "resolve_device",
           "label_dtype"]

log = logging.getLogger(__name__)

ALL_AXES = (0, 1, 2)


@dataclass
class Prediction:
    """Result of :func:`predict_case`.

    Attributes
    ----------
    labels : LabelMap (x, y, z), uint8 when K <= 256 (else uint16), on exactly the
        input grid (same spatial shape and affine); ``meta`` is the input's.
    probabilities : Probabilities (K, x, y, z) float32 softmax probabilities on the
        input grid (channel 0 = background), or None unless requested.
    timings_s : wall seconds of ``preprocess``, ``network`` and ``invert``.
    """

    labels: Volume
    probabilities: Volume | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """A network ready to predict and the description it was trained with.

    Attributes
    ----------
    model : the network in eval mode on ``device``.
    preprocessing : ``Preprocessing.to_config()`` dict.
    roi_size : sliding-window size (x, y, z) in voxels of the preprocessed grid.
    overlap : window overlap fraction in [0, 1).
    in_channels : image channels the network expects (None: not checked).
    out_channels : classes K, background included (None: from the output).
    label_names : label value -> name (0 = background not required).
    keep_largest : keep only the largest connected component of each label
        (``inference.keep_largest`` of the checkpoint).
    source : the checkpoint file, or ``"model"`` for a bare module (for messages).
    """

    model: nn.Module
    preprocessing: dict[str, Any]
    roi_size: tuple[int, int, int]
    overlap: float = 0.5
    in_channels: int | None = None
    out_channels: int | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    keep_largest: bool = False
    source: str = "model"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available else CPU; refuse CUDA without a GPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {device!r}: expected cpu, cuda, cuda:N or auto") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return resolved


# -- model resolution ------------------------------------------------------------------------
def _roi_and_overlap(
    inference: Mapping[str, Any], source: str
) -> tuple[tuple[int, int, int], float]:
    roi = inference.get("roi_size")
    if roi is None or len(list(roi)) != 3 or min(int(r) for r in roi) < 1:
        raise CheckpointError(
            f"inference.roi_size must be three positive voxel counts (x, y, z), got {roi!r}",
            None if source == "model" else source,
        )
    x, y, z = (int(r) for r in roi)
    return (x, y, z), float(inference.get("overlap", 0.5))


def load_model_spec(
    model_or_checkpoint: Any,
    device: torch.device,
    checkpoint_meta: Mapping[str, Any] | None = None,
) -> ModelSpec:
    """A ModelSpec from a checkpoint path, a loaded ``Checkpoint``, a ``ModelSpec`` or a module.

    For a bare ``nn.Module``, ``checkpoint_meta`` gives ``preprocessing`` (dict),
    ``inference`` ({"roi_size": [x, y, z], "overlap": f}) and optionally
    ``in_channels`` and ``label_names``, as in a checkpoint.
    """
    from medseg.checkpoint import Checkpoint, load_checkpoint

    if isinstance(model_or_checkpoint, ModelSpec):
        model_or_checkpoint.model.to(device).eval()
        return model_or_checkpoint
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        model_or_checkpoint = load_checkpoint(model_or_checkpoint, device="cpu")
    if isinstance(model_or_checkpoint, Checkpoint):
        ckpt = model_or_checkpoint
        roi, overlap = _roi_and_overlap(ckpt.inference, str(ckpt.path))
        return ModelSpec(
            model=ckpt.build_model(device), preprocessing=dict(ckpt.preprocessing),
            roi_size=roi, overlap=overlap, in_channels=ckpt.in_channels,
            out_channels=ckpt.out_channels,
            label_names={int(k): v for k, v in ckpt.label_names.items()},
            keep_largest=bool(ckpt.inference.get("keep_largest", False)), source=str(ckpt.path),
        )
    if isinstance(model_or_checkpoint, nn.Module):
        meta = dict(checkpoint_meta or {})
        if "inference" not in meta:
            raise UsageError("a bare nn.Module needs checkpoint_meta={'preprocessing': {...}, "
                             "'inference': {'roi_size': [x, y, z]}}")
        roi, overlap = _roi_and_overlap(meta["inference"], "model")
        in_ch = meta.get("in_channels")
        return ModelSpec(
            model=model_or_checkpoint.to(device).eval(),
            preprocessing=dict(meta.get("preprocessing") or {}), roi_size=roi, overlap=overlap,
            in_channels=None if in_ch is None else int(in_ch),
            out_channels=meta.get("out_channels"),
            keep_largest=bool(meta["inference"].get("keep_largest", False)),
            label_names={int(k): v for k, v in dict(meta.get("label_names") or {}).items()},
        )
    raise UsageError(
        "model_or_checkpoint must be a checkpoint path, a medseg Checkpoint or an nn.Module, "
        f"got {type(model_or_checkpoint).__name__}"
    )


# -- checks ----------------------------------------------------------------------------------
def _image_source(volume: Volume) -> str | None:
    """The file or DICOM folder a volume was read from (for error messages), if known."""
    if volume.meta.get("source"):
        return str(volume.meta["source"])
    files = volume.meta.get("dicom_files")
    return str(Path(files[0]).parent) if files else None


def check_image(volume: Volume, spec: ModelSpec) -> None:
    """Refuse an image the network cannot take: wrong channel count, NaN or inf voxels.

    Raises
    ------
    DataError naming the image file (and the checkpoint in the message).
    """
    source = _image_source(volume)
    channels = volume.shape[0] if volume.has_channels else 1
    if spec.in_channels is not None and channels != spec.in_channels:
        raise DataError(
            f"checkpoint {spec.source} expects {spec.in_channels} input channels, image has "
            f"{channels}",
            source,
        )
    array = volume.array
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(
                f"image holds {bad} NaN/infinite voxels; fill or mask them before predicting",
                source,
            )


# -- the network -----------------------------------------------------------------------------
def _window_kwargs(spec: ModelSpec, overlap: float | None, tta: bool, batch_size: int,
                   device: torch.device, progress: bool) -> dict[str, Any]:
    return {
        "roi_size": spec.roi_size,
        "overlap": spec.overlap if overlap is None else float(overlap),
        "blend": "gaussian",
        "batch_size": int(batch_size),
        "device": device,
        "mirror_axes": ALL_AXES if tta else (),
        "progress": progress,
    }


def _log_memory_estimate(image: torch.Tensor, num_classes: int | None, kwargs: dict[str, Any],
                         probabilities: bool) -> int | None:
    """Log (and return) the sliding window's pre-flight peak-memory estimate in bytes."""
    from medseg.inference.memory import estimate_peak_memory, format_bytes

    if num_classes is None:
        return None
    output = "probabilities" if probabilities else "labels"
    value = estimate_peak_memory(
        tuple(image.shape), num_classes, kwargs["roi_size"], batch_size=kwargs["batch_size"],
        output=output, overlap=kwargs["overlap"], mirror=bool(kwargs["mirror_axes"]),
    )
    level = logging.INFO if value >= 1 << 30 else logging.DEBUG  # only worth a line when large
    log.log(level, "sliding window on %s, %d classes (%s): about %s at peak, on %s",
            "x".join(map(str, image.shape[2:])), num_classes,
            "probabilities" if probabilities else "slab-wise argmax", format_bytes(value),
            kwargs["device"])
    return value


def _out_device(device: torch.device, estimate: int | None) -> torch.device:
    """Stitch on the GPU when the estimate fits in half its free memory, else on the CPU."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if estimate is not None and estimate < free // 2:
        return device
    log.info("stitching on the CPU: estimate does not fit half the free GPU memory (%d MiB)",
             free // 2**20)
    return torch.device("cpu")


def _network_labels(predictor, image: torch.Tensor, kwargs: dict[str, Any], affine: Any
                    ) -> LabelMap:
    """Memory-bounded path: (1, C, x', y', z') -> LabelMap (x', y', z') via slab-wise argmax,
    on the network grid ``affine`` (dtype: :func:`medseg.argmax.label_dtype`)."""
    from medseg.inference.sliding_window import sliding_window_argmax

    labels = sliding_window_argmax(predictor, image, **kwargs)
    labels = labels[0] if labels.ndim == 4 else labels
    return LabelMap(labels.cpu().numpy(), affine)


def _network_probabilities(predictor, image: torch.Tensor, kwargs: dict[str, Any], affine: Any
                           ) -> Probabilities:
    """(1, C, x', y', z') -> softmax Probabilities (K, x', y', z') float32 on the CPU, on the
    network grid ``affine``."""
    from medseg.inference.sliding_window import sliding_window

    logits = sliding_window(predictor, image, **kwargs)[0].float()
    return Probabilities(_softmax_(logits).cpu().numpy(), affine)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over channels (dim 0) in place: temporaries of one channel, not K."""
    logits.sub_(logits.max(dim=0, keepdim=True).values).exp_()
    return logits.div_(logits.sum(dim=0, keepdim=True))


#: Largest (K, x', y', z') float32 probability array on the network grid that the label
#: path keeps in order to interpolate probabilities back to the input grid (nnU-Net's way);
#: above it labels come back by nearest neighbour from the slab-wise argmax.
PROBABILITY_BUDGET_BYTES = 4 << 30


def _interpolate_labels(history, image: torch.Tensor, num_classes: int | None,
                        label_interp: str) -> bool:
    """Whether the label map comes back by interpolating probabilities (see ``predict_case``)."""
    if label_interp == "nearest" or not history.resamples:
        return False
    need = None if num_classes is None else num_classes * image[0, 0].numel() * 4
    if need is not None and need <= PROBABILITY_BUDGET_BYTES:
        return True
    log.info("label map back to the input grid by nearest neighbour: interpolating "
             "probabilities needs %s", "an unknown class count" if need is None
             else f"{need / 2**30:.1f} GiB of probabilities (budget "
                  f"{PROBABILITY_BUDGET_BYTES / 2**30:.0f} GiB)")
    return False


# -- the whole thing -------------------------------------------------------------------------
OUTPUTS = ("labels", "probabilities")
LABEL_INTERPS = ("linear", "nearest")


def predict_volume(
    model_or_checkpoint: Any,
    volume: Volume,
    *,
    output: str = "labels",
    device: str | torch.device | None = None,
    overlap: float | None = None,
    tta: bool = False,
    batch_size: int = 4,
    progress: bool = False,
    checkpoint_meta: Mapping[str, Any] | None = None,
    keep_largest: bool | None = None,
    amp: bool | None = None,
    label_interp: str = "linear",
) -> Volume:
    """Segment one image into a Volume on exactly the input's grid (same shape and affine).

    ``output="labels"`` (default) gives the label map (x, y, z), uint8 when K <= 256,
    computed on the memory-bounded slab-wise path; ``output="probabilities"`` gives the
    per-class softmax probabilities (K, x, y, z) float32 (channel 0 = background).
    The other parameters are those of :func:`predict_case`, which also returns both
    outputs at once and the time of each step.
    """
    check_option(output, OUTPUTS, "output")
    result = predict_case(model_or_checkpoint, volume, device=device, overlap=overlap, tta=tta,
                          batch_size=batch_size, save_probabilities=output == "probabilities",
                          progress=progress, checkpoint_meta=checkpoint_meta,
                          keep_largest=keep_largest, amp=amp, label_interp=label_interp)
    return result.labels if output == "labels" else result.probabilities


def predict_case(
    model_or_checkpoint: Any,
    volume: Volume,
    *,
    device: str | torch.device | None = None,
    overlap: float | None = None,
    tta: bool = False,
    batch_size: int = 4,
    save_probabilities: bool = False,
    progress: bool = False,
    checkpoint_meta: Mapping[str, Any] | None = None,
    keep_largest: bool | None = None,
    amp: bool | None = None,
    label_interp: str = "linear",
) -> Prediction:
    """Segment one image; the label map has exactly the input's shape and affine.

    Parameters
    ----------
    model_or_checkpoint : a checkpoint path (``.safetensors``), a loaded
        :class:`medseg.checkpoint.Checkpoint`, a :class:`ModelSpec`, or a bare
        ``nn.Module`` together with ``checkpoint_meta``.
    volume : image Volume (x, y, z) or (C, x, y, z), any numeric dtype (CT in HU).
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or None/"auto" (CUDA when available).
    overlap : window overlap in [0, 1); default: the checkpoint's ``inference.overlap``.
    tta : average the network over mirrorings along all three axes (8 passes).
    batch_size : windows per network call.
    save_probabilities : also return the (K, x, y, z) softmax probabilities on the
        input grid (needs K x the image's voxels x 4 bytes; labels are then their argmax).
    progress : tqdm bar over windows.
    checkpoint_meta : for a bare module: ``preprocessing``, ``inference``
        ({"roi_size": [x, y, z] voxels, "overlap": f}), ``in_channels``, ``label_names``.
    keep_largest : keep only the largest connected component of each label in the
        label map (probabilities are left as they are); default: the checkpoint's
        ``inference.keep_largest`` (False when absent).
    amp : network precision: None (auto: fp16 autocast on CUDA, fp32 on the CPU),
        True (fp16 on CUDA, bf16 on the CPU) or False (fp32); see
        :mod:`medseg.inference.precision`.
    label_interp : how the label map returns from the network's grid when preprocessing
        resampled the image: ``"linear"`` (default) interpolates the class probabilities
        and takes their argmax slab by slab, as nnU-Net does (smooth boundaries; needs
        K x the network grid's voxels x 4 bytes, else falls back to nearest with a log
        line); ``"nearest"`` maps the network's label map by nearest neighbour (blocky at
        a coarser network spacing, the least memory and time).

    Returns
    -------
    :class:`Prediction` with ``labels`` (and ``probabilities`` when requested).

    Raises
    ------
    DataError : the image's channel count differs from the checkpoint's, or it holds NaN/inf.
    CheckpointError : unreadable or incompatible checkpoint.
    """
    from medseg.transforms.pipeline import Preprocessing
    from medseg.transforms.resample import as_tensor

    check_option(label_interp, LABEL_INTERPS, "label_interp")
    dev = resolve_device(device)
    spec = load_model_spec(model_or_checkpoint, dev, checkpoint_meta)
    check_image(volume, spec)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    pre = Preprocessing.from_config(spec.preprocessing)
    prepared = pre.apply(volume, None, device=dev if dev.type == "cuda" else None)
    image_t, history = prepared.image, prepared.history
    batch = as_tensor(image_t.array)[None]  # any memory order: windows are gathered
    timings["preprocess"] = time.perf_counter() - start
    log.debug("preprocessed %s -> %s", volume.shape, tuple(batch.shape))

    interp = not save_probabilities and _interpolate_labels(history, batch, spec.out_channels,
                                                            label_interp)
    kwargs = _window_kwargs(spec, overlap, tta, batch_size, dev, progress)
    estimate = _log_memory_estimate(batch, spec.out_channels, kwargs,
                                    save_probabilities or interp)
    kwargs["out_device"] = _out_device(dev, estimate)
    predictor = make_predictor(spec.model, dev, amp)
    start = time.perf_counter()
    with torch.inference_mode():
        if save_probabilities or interp:
            out = _network_probabilities(predictor, batch, kwargs, image_t.affine)
        else:
            out = _network_labels(predictor, batch, kwargs, image_t.affine)
    _sync(dev)
    timings["network"] = time.perf_counter() - start
    del batch, image_t, prepared

    start = time.perf_counter()
    labels, probabilities = _invert(history, out, volume, dev, save_probabilities)
    timings["invert"] = time.perf_counter() - start
    if spec.keep_largest if keep_largest is None else keep_largest:
        from medseg.inference.postprocess import keep_largest_component

        start = time.perf_counter()
        labels = labels.with_array(keep_largest_component(labels.array))
        timings["postprocess"] = time.perf_counter() - start
    return Prediction(labels, probabilities, timings)


def _invert(history, out: LabelMap | Probabilities, volume: Volume, dev: torch.device,
            keep_probabilities: bool) -> tuple[LabelMap, Probabilities | None]:
    """Bring the network output back onto the input grid: labels by ``history.restore_labels``
    (probabilities not kept become labels slab by slab); kept probabilities by
    ``history.invert``, the labels being their argmax."""
    device = dev if dev.type == "cuda" else None
    if isinstance(out, LabelMap) or not keep_probabilities:
        labels = history.restore_labels(out, device)
        return LabelMap(labels.array, volume.affine, volume.meta), None
    probs = history.invert(out, device)
    return (LabelMap(argmax_labels(probs.array), volume.affine, volume.meta),
            Probabilities(probs.array, volume.affine, volume.meta))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
