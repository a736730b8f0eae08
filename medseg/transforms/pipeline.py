"""``Preprocessing``: an ordered, serialisable list of invertible steps.

Steps run in this order (whatever order the config keys come in):

1. ``orientation`` -- permute/flip the axes to e.g. ``"RAS"`` (exact);
2. ``crop_foreground`` -- crop to the box of ``image > threshold`` plus a margin
   (done before resampling, so less is resampled);
3. ``spacing_mm`` -- resample: image linear (or ``"interpolation": "cubic"``),
   label nearest;
4. ``intensity`` -- ``{"mode": "ct", "window": [lo, hi]}`` clips HU and scales to
   [0, 1] (``"output_range": [-1, 1]`` for [-1, 1]); ``{"mode": "mr"}`` z-scores
   each channel with mean/std inside ``image > mask_threshold`` (default 0);
   ``{"mode": "none"}`` only casts; optional ``"clip_percentiles": [lo, hi]``
   clips each channel to those percentiles first (inside the MR mask, or over
   all voxels for CT/none).

:meth:`Preprocessing.apply` returns a small :class:`PreprocessingRecord` with
what each geometric step needs to be undone; :meth:`Preprocessing.invert`
walks it backwards and returns a Volume on exactly the input grid (shape and
affine). Labels are inverted with nearest-neighbour resampling of the label
map (never a (K, X, Y, Z) array); probabilities with linear resampling, and
padded outside the crop box with certain background (channel 0 = 1).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg.argmax import argmax_labels
from medseg.errors import ConfigError, GeometryError, UsageError, check_option
from medseg.transforms.crop import foreground_bbox, uncrop
from medseg.transforms.intensity import clip_percentiles, ct_window, zscore
from medseg.transforms.orientation import (
    apply_orientation,
    invert_orientation,
    orientation_transform,
)
from medseg.transforms.resample import grid_for_spacing, resample_to_grid
from medseg.transforms.resample_argmax import resample_argmax
from medseg.volume import Volume

__all__ = ["Preprocessing", "PreprocessingRecord"]

log = logging.getLogger(__name__)

_KEYS = ("orientation", "spacing_mm", "intensity", "crop_foreground", "interpolation")
_INTENSITY_KEYS = ("mode", "window", "output_range", "clip_percentiles", "mask_threshold")
_CROP_KEYS = ("threshold", "margin")
DEFAULT_CROP_MARGIN = 2  # voxels
DEFAULT_CT_BODY_HU = -500.0
Device = str | torch.device | None


@dataclass
class PreprocessingRecord:
    """What :meth:`Preprocessing.invert` needs: the input grid and one entry per geometric step.

    ``output_shape``/``output_affine`` describe the preprocessed grid. ``steps``
    holds plain dicts (JSON-serialisable): ``{"step": "orientation",
    "transform": (3, 2) ornt}``, ``{"step": "crop", "start", "shape", "affine"}``
    (grid before cropping), ``{"step": "resample", "shape", "affine"}`` (grid
    before resampling).
    """

    input_shape: tuple[int, int, int]
    input_affine: list[list[float]]
    output_shape: tuple[int, int, int]
    output_affine: list[list[float]]
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "input_affine": self.input_affine,
            "output_shape": list(self.output_shape),
            "output_affine": self.output_affine,
            "steps": copy.deepcopy(self.steps),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessingRecord:
        return cls(
            tuple(data["input_shape"]),
            [list(map(float, row)) for row in data["input_affine"]],
            tuple(data["output_shape"]),
            [list(map(float, row)) for row in data["output_affine"]],
            copy.deepcopy(list(data["steps"])),
        )


class Preprocessing:
    """Ordered preprocessing built from a config dict; see the module docstring.

    >>> pre = Preprocessing.from_config({"orientation": "RAS", "spacing_mm": [1.5, 1.5, 3.0],
    ...     "intensity": {"mode": "ct", "window": [-200, 300]}, "crop_foreground": True})
    >>> pre.to_config()["spacing_mm"]
    [1.5, 1.5, 3.0]
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = _validate(config)
        self.steps = _build_steps(self._config)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """Build from a dict (e.g. the ``preprocessing`` block of a pipeline YAML or checkpoint)."""
        return cls(config)

    def to_config(self) -> dict[str, Any]:
        """The config as given (tuples as lists): JSON-serialisable, round-trips."""
        return copy.deepcopy(self._config)

    def __repr__(self) -> str:
        return f"Preprocessing({self._config!r})"

    def apply(
        self, image: Volume, label: Volume | None = None, device: Device = None
    ) -> tuple[Volume, Volume | None, PreprocessingRecord]:
        """Preprocess ``image`` (and ``label`` on the same grid).

        Parameters
        ----------
        image : Volume (x, y, z) or (C, x, y, z), any numeric dtype.
        label : optional integer Volume (x, y, z) on the image's grid.
        device : where resampling runs (e.g. ``"cuda"``); results come back as NumPy.

        Returns
        -------
        image_t : Volume float32 (C, x', y', z').
        label_t : Volume (x', y', z') with the label's dtype on the same grid, or None.
        record : :class:`PreprocessingRecord` for :meth:`invert`.
        """
        if not isinstance(image, Volume):
            raise UsageError(f"image must be a medseg Volume, got {type(image).__name__}")
        if label is not None and not image.same_grid(label, tol_mm=1e-4):
            raise GeometryError(
                f"label grid {label.spatial_shape} does not match the image grid "
                f"{image.spatial_shape} (shape and affine must agree)"
            )
        array = image.array if image.has_channels else image.array[None]
        # The input dtype travels until a step makes it float32 (resampling, intensity):
        # an up-front float32 copy of a 512 x 512 x 300 int16 CT cost 0.4 s, and doubled
        # the bytes every later copy moves. The values are the same either way.
        image_f = Volume(array, image.affine, image.meta)
        record = PreprocessingRecord(
            image.spatial_shape, image.affine.tolist(), image.spatial_shape, []
        )
        for step in self.steps:
            image_f, label, entry = step.apply(image_f, label, device)
            if entry is not None:
                record.steps.append(entry)
        image_f = image_f.with_array(image_f.array.astype(np.float32, copy=False))
        record.output_shape = image_f.spatial_shape
        record.output_affine = image_f.affine.tolist()
        return image_f, label, record

    def invert(
        self,
        volume: Volume | np.ndarray | torch.Tensor,
        record: PreprocessingRecord | Mapping[str, Any],
        kind: str = "label",
        device: Device = None,
    ) -> Volume:
        """Bring ``volume`` from the preprocessed grid back onto the input grid exactly.

        Parameters
        ----------
        volume : kind ``"label"``: integer map (x', y', z'); kind ``"prob"``:
            (K, x', y', z') probabilities (channel 0 = background). A Volume or
            a bare array on the grid ``record.output_shape``.
        record : from :meth:`apply` (or its ``to_dict()``).
        kind : ``"label"`` (nearest, dtype kept), ``"prob"`` (linear, float32), or
            ``"argmax"``: ``volume`` is (K, x', y', z') probabilities and the result
            the label map of their linear resampling, computed slab by slab
            (:func:`medseg.transforms.resample_argmax.resample_argmax`).

        Returns
        -------
        Volume with the input's spatial shape and exactly its affine.
        """
        kind = check_option(kind, INVERT_KINDS, "kind")
        if not isinstance(record, PreprocessingRecord):
            record = PreprocessingRecord.from_dict(record)
        current = _as_output_volume(volume, record, "prob" if kind == "argmax" else kind)
        for entry in reversed(record.steps):
            if kind == "argmax" and entry["step"] == "resample":
                current = resample_argmax(current, entry["shape"], np.asarray(entry["affine"]),
                                          device)
                kind = "label"
            else:
                current = _INVERSES[entry["step"]](current, entry, kind, device)
        if kind == "argmax":  # no resampling step: argmax on the input grid
            current = current.with_array(argmax_labels(current.array))
        return Volume(current.array, np.asarray(record.input_affine), current.meta)


# -- steps -------------------------------------------------------------------------


class _Reorient:
    def __init__(self, orientation: str) -> None:
        self.orientation = orientation

    def apply(self, image: Volume, label: Volume | None, device: Device):
        transform = orientation_transform(image.affine, self.orientation)
        image = apply_orientation(image, transform)
        label = None if label is None else apply_orientation(label, transform)
        return image, label, {"step": "orientation", "transform": transform.tolist()}


class _Crop:
    def __init__(self, threshold: float, margin: int) -> None:
        self.threshold, self.margin = threshold, margin

    def apply(self, image: Volume, label: Volume | None, device: Device):
        start, stop = foreground_bbox(image.array, self.threshold, self.margin)
        entry = {"step": "crop", "start": list(start), "shape": list(image.spatial_shape),
                 "affine": image.affine.tolist()}
        image = image.crop(start, stop)
        label = None if label is None else label.crop(start, stop)
        return image, label, entry


class _Resample:
    def __init__(self, spacing_mm: list[float], interpolation: str) -> None:
        self.spacing_mm, self.interpolation = spacing_mm, interpolation

    def apply(self, image: Volume, label: Volume | None, device: Device):
        entry = {"step": "resample", "shape": list(image.spatial_shape),
                 "affine": image.affine.tolist()}
        shape, affine = grid_for_spacing(image.spatial_shape, image.affine, self.spacing_mm)
        image = resample_to_grid(image, shape, affine, self.interpolation, device)
        if label is not None:
            label = resample_to_grid(label, shape, affine, "nearest", device)
        return image, label, entry


class _Intensity:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def apply(self, image: Volume, label: Volume | None, device: Device):
        spec, array = self.spec, image.array
        mask = None
        if spec["mode"] == "mr":
            mask = (array > float(spec.get("mask_threshold", 0.0))).any(axis=0)
        if "clip_percentiles" in spec:
            array = clip_percentiles(array, spec["clip_percentiles"], mask)
        if spec["mode"] == "ct":
            array = ct_window(array, spec["window"], spec.get("output_range", (0.0, 1.0)))
        elif spec["mode"] == "mr":
            array = zscore(array, mask)
        return image.with_array(np.asarray(array, dtype=np.float32)), label, None


# -- inverses ----------------------------------------------------------------------


def _invert_orientation(volume: Volume, entry: dict, kind: str, device: Device) -> Volume:
    return apply_orientation(volume, invert_orientation(np.asarray(entry["transform"])))


def _invert_crop(volume: Volume, entry: dict, kind: str, device: Device) -> Volume:
    fill: Any = 0
    if kind == "prob":
        fill = np.zeros(volume.array.shape[0], dtype=volume.array.dtype)
        fill[0] = 1
    array = uncrop(volume.array, tuple(entry["shape"]), tuple(entry["start"]), fill)
    return Volume(array, np.asarray(entry["affine"]), volume.meta)


def _invert_resample(volume: Volume, entry: dict, kind: str, device: Device) -> Volume:
    mode = "nearest" if kind == "label" else "linear"
    return resample_to_grid(volume, entry["shape"], np.asarray(entry["affine"]), mode, device)


_INVERSES = {"orientation": _invert_orientation, "crop": _invert_crop,
             "resample": _invert_resample}
INVERT_KINDS = ("label", "prob", "argmax")


def _as_output_volume(volume, record: PreprocessingRecord, kind: str) -> Volume:
    array = volume.array if isinstance(volume, Volume) else volume
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if kind == "label" and array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    expected = "(x, y, z) label map" if kind == "label" else "(K, x, y, z) probabilities"
    if array.ndim != (3 if kind == "label" else 4) or array.shape[-3:] != tuple(
        record.output_shape
    ):
        raise GeometryError(
            f"invert(kind={kind!r}) needs a {expected} on the preprocessed grid "
            f"{list(record.output_shape)}, got shape {list(array.shape)}"
        )
    if kind == "label" and np.issubdtype(array.dtype, np.floating):
        raise UsageError(
            f"invert(kind='label') needs an integer label map, got dtype {array.dtype}; "
            "use kind='prob' for probabilities"
        )
    if kind == "prob":
        array = array.astype(np.float32, copy=False)
    affine = volume.affine if isinstance(volume, Volume) else np.asarray(record.output_affine)
    return Volume(array, affine)


# -- config ------------------------------------------------------------------------


def _build_steps(config: Mapping[str, Any]) -> list:
    steps: list = []
    if config.get("orientation"):
        steps.append(_Reorient(config["orientation"]))
    crop = config.get("crop_foreground", False)
    if crop:
        crop = crop if isinstance(crop, Mapping) else {}
        mode = config.get("intensity", {}).get("mode", "none")
        default = DEFAULT_CT_BODY_HU if mode == "ct" else 0.0
        steps.append(_Crop(float(crop.get("threshold", default)),
                           int(crop.get("margin", DEFAULT_CROP_MARGIN))))
    if config.get("spacing_mm") is not None:
        steps.append(_Resample(config["spacing_mm"], config.get("interpolation", "linear")))
    if config.get("intensity"):
        steps.append(_Intensity(config["intensity"]))
    return steps


def _validate(config: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(config, Mapping):
        raise ConfigError(f"preprocessing config must be a mapping, got {type(config).__name__}")
    config = json.loads(json.dumps(dict(config)))  # copy; tuples -> lists; rejects non-JSON
    for key in config:
        check_option(key, _KEYS, "preprocessing key", ConfigError)
    if config.get("orientation") is not None:
        orientation_transform(np.eye(4), config["orientation"])  # validates the codes
    if config.get("spacing_mm") is not None:
        grid_for_spacing((8, 8, 8), np.eye(4), config["spacing_mm"])
    if "interpolation" in config:
        check_option(config["interpolation"], ("linear", "cubic"), "interpolation", ConfigError)
    _validate_intensity(config.get("intensity"))
    crop = config.get("crop_foreground", False)
    if isinstance(crop, Mapping):
        for key in crop:
            check_option(key, _CROP_KEYS, "crop_foreground key", ConfigError)
    elif not isinstance(crop, bool):
        raise ConfigError(f"crop_foreground must be true/false or a mapping, got {crop!r}")
    return config


def _validate_intensity(spec: Any) -> None:
    if spec is None:
        return
    if not isinstance(spec, Mapping) or "mode" not in spec:
        raise ConfigError(f"intensity must be a mapping with a 'mode' key, got {spec!r}")
    for key in spec:
        check_option(key, _INTENSITY_KEYS, "intensity key", ConfigError)
    mode = check_option(spec["mode"], ("ct", "mr", "none"), "intensity mode", ConfigError)
    probe = np.zeros((1, 2, 2, 2), dtype=np.float32)
    try:
        if mode == "ct":
            if "window" not in spec:
                raise ConfigError("intensity mode 'ct' needs 'window': [lo, hi] in HU")
            ct_window(probe, spec["window"], spec.get("output_range", (0.0, 1.0)))
        if "clip_percentiles" in spec:
            clip_percentiles(probe, spec["clip_percentiles"])
    except UsageError as err:
        raise ConfigError(f"intensity: {err.message}") from None
