"""One image in, its label map (and probabilities) out, as ``medseg predict`` does, in NumPy.

What an export folder holds (:func:`medseg.export.export_model` writes it): ``card.json``
(the model card, :meth:`medseg.card.ModelCard.to_dict`), ``model.json`` (the manifest: the
network files, the ensemble's ``combine`` rule, medseg's preprocessing steps with every
default resolved or nnU-Net's reader) and the networks. :func:`predict_volume` runs::

    Volume (x, y, z) | (C, x, y, z)
      --preprocess (medseg: orientation, crop, resample (trilinear), intensity;
                    nnU-Net: reader frame, transpose, crop to non-zero, normalise, resample)-->
      (C, x', y', z') float32
      --sliding window (the card's blending, mirroring TTA, the ensemble's combine rule)-->
      probabilities (medseg) | float16 logits (nnU-Net)
      --restore (resampled back, activated, argmax slab by slab, uncropped, reoriented)-->
      labels (x, y, z) on exactly the input grid --card's post-processing--> labels

The steps and their numbers are medseg's own: the NumPy modules are shared with medseg (see
:mod:`medseg.export.runtime`), the torch ones mirrored and tested against it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.card import Postprocess, WindowSettings
from medseg.confidence import Confidence, label_scaled, temper
from medseg.errors import CheckpointError, DataError
from medseg.export.runtime.networks import load_networks, mean_softmax, softmax
from medseg.export.runtime.resample import iter_resampled_slabs, resample_to_grid
from medseg.export.runtime.window import sliding_window
from medseg.inference.postprocess import apply_postprocess
from medseg.transforms.crop import foreground_bbox, nonzero_bbox, uncrop
from medseg.transforms.grid import grid_for_spacing
from medseg.transforms.intensity import apply_intensity
from medseg.transforms.nnunet_intensity import ChannelNormalization
from medseg.transforms.orientation import (
    apply_orientation,
    invert_orientation,
    orientation_transform,
)
from medseg.transforms.resample_nnunet import (
    ResamplingRule,
    iter_resampled,
    resample,
    target_shape,
)
from medseg.volume import Volume

__all__ = ["CARD", "MANIFEST", "ExportedModel", "Result", "label_dtype", "predict_volume"]

log = logging.getLogger(__name__)

CARD, MANIFEST = "card.json", "model.json"
ALL_AXES = (0, 1, 2)


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 up to 256 classes, uint16 above (:func:`medseg.argmax.label_dtype`'s rule)."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


@dataclass
class ExportedModel:
    """An export folder, loaded: its card and manifest (JSON) and its networks."""

    folder: Path
    card: dict[str, Any]
    manifest: dict[str, Any]
    networks: list[Any]

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int = 0, precision: str = "fp32"
             ) -> ExportedModel:
        """Read ``folder`` (CheckpointError naming the file that is missing or unreadable);
        ``threads`` and ``precision`` as :func:`~medseg.export.runtime.networks.load_networks`
        takes them."""
        folder = Path(folder)
        card, manifest = (_read_json(folder / name) for name in (CARD, MANIFEST))
        window = (int(card["model"]["in_channels"]), *card["window"]["roi_size"])
        networks = load_networks(folder, manifest, window, threads, precision)
        return cls(folder, card, manifest, networks)

    @property
    def num_classes(self) -> int:
        return int(self.card["model"]["out_channels"])

    @property
    def in_channels(self) -> int:
        return int(self.card["model"]["in_channels"])

    def window(self, tta: bool | None) -> WindowSettings:
        """The card's window settings; ``tta`` True mirrors the card's axes (all three when
        it has none), False none, None as the card says (``medseg predict --tta``)."""
        data = dict(self.card["window"])
        window = WindowSettings(**{**data, "mirror_axes": tuple(data.get("mirror_axes", ()))})
        if tta is not None:
            axes = (window.mirror_axes or ALL_AXES) if tta else ()
            window = WindowSettings(window.roi_size, window.overlap, window.blend,
                                    window.batch_size, axes)
        return window

    @property
    def temperatures(self) -> float | tuple[float, ...]:
        """The card's calibration temperature(s) (:meth:`Confidence.temperatures`; 1: none)."""
        data = self.card.get("confidence")
        return 1.0 if not data else Confidence.from_dict(data).temperatures(self.num_classes)

    @property
    def postprocess(self) -> Postprocess:
        return Postprocess(**dict(self.card.get("postprocess") or {}))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the export's {path.name} ({exc})", path) from None


@dataclass
class Result:
    """labels (x, y, z) on the input grid; probabilities (K, x, y, z) float32 or None."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def predict_volume(model: ExportedModel, volume: Volume, tta: bool | None = None,
                   probabilities: bool = False) -> Result:
    """Segment ``volume`` as ``medseg predict`` would with the exported model.

    Raises
    ------
    DataError naming the image: channels other than the card's, or NaN / inf voxels.
    """
    _check(volume, model.in_channels)
    steps = (_NnunetSteps(model.card["preprocessing"], model.manifest)
             if model.card["preprocessing"].get("kind") == "nnunet"
             else _MedsegSteps(model.manifest["steps"]))
    image = steps.forward(volume)
    output = _network_output(model, image, model.window(tta))
    labels, probs = steps.restore(output, model.num_classes, probabilities)
    if probs is not None and isinstance(steps, _MedsegSteps):
        probs = temper(probs, model.temperatures)  # on the input grid, as medseg predict
    post = model.postprocess
    if post.active:
        labels = apply_postprocess(labels, post, volume.spacing_mm)
    return Result(labels, probs)


def _check(volume: Volume, channels: int) -> None:
    source = volume.meta.get("source")
    have = volume.shape[0] if volume.has_channels else 1
    if have != channels:
        raise DataError(f"the model expects {channels} input channel(s), the image has {have}",
                        source)
    if volume.array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise DataError(f"image holds {bad} NaN/infinite voxels; fill or mask them before "
                            "predicting", source)


def _network_output(model: ExportedModel, image: np.ndarray, window: WindowSettings
                    ) -> np.ndarray:
    """Probabilities (medseg's cards, uncalibrated: :func:`predict_volume` calibrates them
    on the input grid) or logits (nnU-Net's, scaled by the card's temperature(s)) on the
    network grid, the members combined as the manifest's rule says
    (:func:`medseg.inference.predict._blend`), as ``medseg predict`` does."""
    members = model.networks
    combine = model.manifest.get("combine", "mean_softmax")
    if len(members) > 1 and combine == "mean_logits":
        total = None
        for member in members:
            out = sliding_window(member, image, window)
            total = out if total is None else _add(total, out)
        blended, is_probabilities = total / np.array(len(members), total.dtype), False
    elif len(members) > 1:
        blended, is_probabilities = sliding_window(mean_softmax(members), image, window), True
    else:
        blended, is_probabilities = sliding_window(members[0], image, window), False
    temperatures = model.temperatures
    if model.card["preprocessing"].get("kind") == "nnunet":
        return blended if temperatures == 1.0 else label_scaled(blended, temperatures)
    return blended if is_probabilities else softmax(blended, 0)


def _add(total: np.ndarray, out: np.ndarray) -> np.ndarray:
    total += out
    return total


# -- medseg's preprocessing ------------------------------------------------------------------
class _MedsegSteps:
    """medseg's :class:`~medseg.transforms.pipeline.Preprocessing`, from its resolved steps
    (:meth:`~medseg.transforms.pipeline.Preprocessing.step_list`), and its inverse."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = steps
        self.undo: list[tuple] = []

    def forward(self, volume: Volume) -> np.ndarray:
        array = volume.array if volume.has_channels else volume.array[None]
        current = Volume(array, volume.affine)
        for step in self.steps:
            kind = step["step"]
            if kind == "orientation":
                ornt = orientation_transform(current.affine, step["orientation"])
                self.undo.append(("orientation", ornt))
                current = apply_orientation(current, ornt)
            elif kind == "crop":
                start, stop = foreground_bbox(current.array, step["threshold"], step["margin"])
                self.undo.append(("crop", start, current.spatial_shape, current.affine))
                current = current.crop(start, stop)
            elif kind == "resample":
                shape, affine = grid_for_spacing(current.spatial_shape, current.affine,
                                                 step["spacing_mm"])
                self.undo.append(("resample", current.spatial_shape, current.affine))
                current = Volume(resample_to_grid(current.array, current.affine, shape, affine,
                                                  step.get("interpolation", "linear")), affine)
            elif kind == "intensity":
                spec = {k: v for k, v in step.items() if k != "step"}
                current = current.with_array(apply_intensity(current.array, spec))
            else:
                raise CheckpointError(f"unknown preprocessing step {kind!r} in the manifest")
        self.affine = current.affine
        return np.ascontiguousarray(current.array, dtype=np.float32)

    def restore(self, probs: np.ndarray, k: int, keep: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (and, with ``keep``, probabilities) on the input grid; as ``medseg
        predict``, labels come from the probabilities resampled linearly (slab by slab)."""
        dtype = label_dtype(k)
        resamples = any(u[0] == "resample" for u in self.undo)
        current, affine, is_labels = probs, self.affine, False
        if not keep and not resamples:
            current, is_labels = _argmax(probs, dtype), True
        for undo in reversed(self.undo):
            if undo[0] == "resample":
                shape, target = undo[1], undo[2]
                if is_labels:
                    current = resample_to_grid(current, affine, shape, target, "nearest")
                elif keep:
                    current = resample_to_grid(current, affine, shape, target, "linear")
                else:
                    labels = np.empty(tuple(shape), dtype=dtype)
                    for zs, block in iter_resampled_slabs(current, affine, shape, target,
                                                          "linear"):
                        labels[..., zs] = _argmax(block, dtype)
                    current, is_labels = labels, True
                affine = np.asarray(target)
            elif undo[0] == "crop":
                start, shape, affine = undo[1], undo[2], np.asarray(undo[3])
                fill = 0 if is_labels else np.eye(k, dtype=current.dtype)[0]
                current = uncrop(current, shape, start, fill)
            else:
                moved = apply_orientation(Volume(current, affine), invert_orientation(undo[1]))
                current, affine = moved.array, moved.affine
        if keep:
            return _argmax(current, dtype), np.ascontiguousarray(current)
        return np.ascontiguousarray(current), None


def _argmax(probs: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The first largest channel of (K, ...)."""
    return np.argmax(probs, axis=0).astype(dtype)


# -- nnU-Net's preprocessing -----------------------------------------------------------------
class _NnunetSteps:
    """nnU-Net's preprocessing of a card (:class:`medseg.transforms.nnunet.NnunetPreprocessing`,
    its JSON form) and its export, in nnU-Net's frame (a0, a1, a2) = the reader's (z, y, x)
    permuted by ``transpose_forward``; the network sees the window frame (axes reversed)."""

    def __init__(self, pre: dict[str, Any], manifest: dict[str, Any]) -> None:
        self.pre = pre
        self.reorients = bool(manifest.get("reader_reorients", False))
        self.transpose = tuple(int(t) for t in pre["transpose_forward"])
        order = pre.get("regions_class_order")
        self.regions = None if order is None else tuple(int(v) for v in order)

    def forward(self, volume: Volume) -> np.ndarray:
        self.ornt = None
        if self.reorients:
            self.ornt = orientation_transform(volume.affine, "RAS")
            volume = apply_orientation(volume, self.ornt)
        self.reader_affine = volume.affine
        array = volume.array if volume.has_channels else volume.array[None]
        norms = [ChannelNormalization(**n) for n in self.pre["normalization"]]
        data = np.ascontiguousarray(np.transpose(array, (0, 3, 2, 1)), dtype=np.float32)
        data = data.transpose(0, *(t + 1 for t in self.transpose))
        zyx = volume.spacing_mm[::-1]
        spacing = tuple(float(zyx[t]) for t in self.transpose)
        mask, bbox = nonzero_bbox(data, fill=any(n.use_mask_for_norm for n in norms))
        index = tuple(slice(a, b) for a, b in bbox)
        cropped, mask = data[(slice(None), *index)], mask[index]
        target = tuple(float(s) for s in self.pre["spacing"])
        if len(target) == 2:
            target = (spacing[0], *target)
        shape = target_shape(cropped.shape[1:], spacing, target)
        for c, norm in enumerate(norms):
            cropped[c] = norm.apply(cropped[c], mask)
        rule = ResamplingRule.from_dict(self.pre["resampling_data"])
        network = resample(cropped, shape, rule.separate_axis(spacing, target), rule)
        self.back = ResamplingRule.from_dict(self.pre["resampling_probabilities"])
        self.back_axis = self.back.separate_axis(target, spacing)
        self.start = tuple(a for a, _ in bbox)
        self.cropped, self.full = tuple(cropped.shape[1:]), tuple(data.shape[1:])
        return np.ascontiguousarray(network.transpose(0, 3, 2, 1), dtype=np.float32)

    def restore(self, logits: np.ndarray, k: int, keep: bool
                ) -> tuple[np.ndarray, np.ndarray | None]:
        back = logits.transpose(0, 3, 2, 1)  # nnU-Net's frame
        dtype = label_dtype(k if self.regions is None else max(self.regions, default=0) + 1)
        probs = None
        if keep:
            values = resample(back, self.cropped, self.back_axis, self.back)
            probs = self._activate(values)
            labels = self._labels(probs, dtype)
            fill = (np.eye(len(probs), dtype=np.float32)[0] if self.regions is None
                    else np.zeros(len(probs), dtype=np.float32))
            probs = self._to_input(uncrop(probs, self.full, self.start, fill))
        else:
            labels = np.zeros(self.cropped, dtype=dtype)
            for index, block in iter_resampled(back, self.cropped, self.back_axis, self.back):
                labels[index[1:]] = self._labels(self._activate(block, softmax_=False), dtype)
        labels = self._to_input(uncrop(labels, self.full, self.start, 0))
        return labels, probs

    def _activate(self, values: np.ndarray, softmax_: bool = True) -> np.ndarray:
        values = np.asarray(values, dtype=np.float32)
        if self.regions is not None:
            return 1.0 / (1.0 + np.exp(-values))
        return softmax(values, 0) if softmax_ else values

    def _labels(self, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
        if self.regions is None:
            return _argmax(values, dtype)
        labels = np.zeros(values.shape[1:], dtype=dtype)
        for region, label in enumerate(self.regions):
            labels[values[region] > 0.5] = label
        return labels

    def _to_input(self, array: np.ndarray) -> np.ndarray:
        """(..., a0, a1, a2) of nnU-Net's frame -> (..., x, y, z) of the input image."""
        lead = array.ndim - 3
        inverse = np.argsort(self.transpose)
        zyx = array.transpose(*range(lead), *(lead + int(a) for a in inverse))
        xyz = zyx.transpose(*range(lead), *(lead + a for a in (2, 1, 0)))
        if self.ornt is None:
            return np.ascontiguousarray(xyz)
        moved = apply_orientation(Volume(xyz, self.reader_affine),
                                  invert_orientation(self.ornt))
        return np.ascontiguousarray(moved.array)
