"""``Preprocessing``: an ordered, serialisable list of invertible steps.

Steps run in this order (whatever order the config keys come in):

1. ``orientation`` -- permute/flip the axes to e.g. ``"RAS"`` (exact);
2. ``crop_foreground`` -- crop to the box of ``image > threshold`` plus a margin
   (done before resampling, so less is resampled);
3. ``spacing_mm`` -- resample: image linear (or ``"interpolation": "cubic"``),
   label nearest;
4. ``intensity`` -- ``{"mode": "ct", "window": [lo, hi]}`` clips HU and scales to
   [0, 1] (``"output_range": [-1, 1]`` for [-1, 1]), or with ``"mean_std": [mean, std]``
   (HU) clips and then z-scores with those fixed statistics (nnU-Net's CT normalisation,
   dataset foreground statistics); ``{"mode": "mr"}`` z-scores
   each channel with mean/std inside ``image > mask_threshold`` (default 0);
   ``{"mode": "none"}`` only casts; optional ``"clip_percentiles": [lo, hi]``
   clips each channel to those percentiles first (inside the MR mask, or over
   all voxels for CT/none).

:meth:`Preprocessing.apply` returns a :class:`Preprocessed`: the image, the label as a
:class:`~medseg.volume.LabelMap`, and the :class:`~medseg.transforms.history.History` of
the geometric steps. The history undoes itself: ``history.invert(volume)`` returns the
volume's type on exactly the input grid (shape and affine), and
``history.restore_labels(output)`` brings a network output (LabelMap or Probabilities)
back as a label map. The output's type decides the interpolation, never a string.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError, DataError, GeometryError, UsageError, check_option
from medseg.transforms.crop import foreground_bbox
from medseg.transforms.history import (
    Cropped,
    Device,
    History,
    Reoriented,
    Resampled,
    Step,
)
from medseg.transforms.intensity import (
    apply_intensity,
    clip_percentiles,
    ct_window,
    ct_window_zscore,
)
from medseg.transforms.orientation import apply_orientation, orientation_transform
from medseg.transforms.resample import grid_for_spacing, resample_to_grid
from medseg.volume import LabelMap, Volume

__all__ = ["Preprocessed", "Preprocessing"]

log = logging.getLogger(__name__)

_KEYS = ("orientation", "spacing_mm", "intensity", "crop_foreground", "interpolation")
_INTENSITY_KEYS = ("mode", "window", "output_range", "clip_percentiles", "mask_threshold",
                   "mean_std")
_CROP_KEYS = ("threshold", "margin")
DEFAULT_CROP_MARGIN = 2  # voxels
DEFAULT_CT_BODY_HU = -500.0


@dataclass(frozen=True)
class Preprocessed:
    """What :meth:`Preprocessing.apply` returns.

    Attributes
    ----------
    image : Volume float32 (C, x', y', z') on the preprocessed grid.
    label : LabelMap (x', y', z') on the same grid (the input label's dtype), or None.
    history : what was done, to undo it (:class:`~medseg.transforms.history.History`).
    """

    image: Volume
    label: LabelMap | None
    history: History


class Preprocessing:
    """Ordered preprocessing built from a config dict; see the module docstring.

    >>> pre = Preprocessing.from_config({"orientation": "RAS", "spacing_mm": [1.5, 1.5, 3.0],
    ...     "intensity": {"mode": "ct", "window": [-200, 300]}, "crop_foreground": True})
    >>> pre.to_config()["spacing_mm"]
    [1.5, 1.5, 3.0]
    """

    #: The card's name of this kind of preprocessing (:mod:`medseg.transforms.kinds`).
    kind = "medseg"
    #: The network's outputs return as Probabilities or a LabelMap, never as logits.
    resamples_logits = False

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = _validate(config)
        self.steps = _build_steps(self._config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocessing) and other._config == self._config

    def __hash__(self) -> int:
        return hash(json.dumps(self._config, sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """The model card's JSON form: the config (:meth:`to_config`)."""
        return self.to_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        """Build from a dict (e.g. the ``preprocessing`` block of a pipeline YAML or checkpoint)."""
        return cls(config)

    def to_config(self) -> dict[str, Any]:
        """The config as given (tuples as lists): JSON-serialisable, round-trips."""
        return copy.deepcopy(self._config)

    def __repr__(self) -> str:
        return f"Preprocessing({self._config!r})"

    def step_list(self) -> list[dict[str, Any]]:
        """The steps in the order :meth:`apply` runs them, with every default resolved, as
        JSON: ``{"step": "orientation", "orientation": "RAS"}``, ``{"step": "crop",
        "threshold": HU, "margin": voxels}``, ``{"step": "resample", "spacing_mm": [x, y, z],
        "interpolation": "linear"}``, ``{"step": "intensity", ...the intensity block}``
        (what ``medseg export``'s runner follows)."""
        return [step.describe() for step in self.steps]

    def apply(
        self, image: Volume, label: Volume | None = None, device: Device = None
    ) -> Preprocessed:
        """Preprocess ``image`` (and ``label`` on the same grid).

        Parameters
        ----------
        image : Volume (x, y, z) or (C, x, y, z), any numeric dtype.
        label : optional integer label map (x, y, z) on the image's grid: a LabelMap,
            or a plain Volume of an integer dtype (it comes back as a LabelMap).
        device : where resampling runs (e.g. ``"cuda"``); results come back as NumPy.

        Returns
        -------
        :class:`Preprocessed` (image, label, history).

        Raises
        ------
        UsageError : ``image`` is not a Volume.
        GeometryError : the label is not on the image's grid, or not (x, y, z).
        DataError : the label is not of an integer dtype.
        """
        if not isinstance(image, Volume):
            raise UsageError(f"image must be a medseg Volume, got {type(image).__name__}")
        if label is not None:
            if not image.same_grid(label, tol_mm=1e-4):
                raise GeometryError(
                    f"label grid {label.spatial_shape} does not match the image grid "
                    f"{image.spatial_shape} (shape and affine must agree)"
                )
            label = _label_map(label)
        array = image.array if image.has_channels else image.array[None]
        # The input dtype travels until a step makes it float32 (resampling, intensity):
        # an up-front float32 copy of a 512 x 512 x 300 int16 CT cost 0.4 s, and doubled
        # the bytes every later copy moves. The values are the same either way.
        image_f = Volume(array, image.affine, image.meta)
        applied: list[Step] = []
        for step in self.steps:
            image_f, label, done = step.apply(image_f, label, device)
            if done is not None:
                applied.append(done)
        image_f = image_f.with_array(image_f.array.astype(np.float32, copy=False))
        history = History(image.spatial_shape, image.affine, image_f.spatial_shape,
                          image_f.affine, tuple(applied))
        return Preprocessed(image_f, label, history)


def _label_map(label: Volume) -> LabelMap:
    """``label`` as a LabelMap; errors name the parameter and the label's file."""
    try:
        return LabelMap(label.array, label.affine, label.meta)
    except (DataError, GeometryError) as err:
        raise type(err)(f"label: {err.message}", label.meta.get("source")) from None


# -- steps -------------------------------------------------------------------------


class _Reorient:
    def __init__(self, orientation: str) -> None:
        self.orientation = orientation

    def apply(self, image: Volume, label: LabelMap | None, device: Device):
        transform = orientation_transform(image.affine, self.orientation)
        image = apply_orientation(image, transform)
        label = None if label is None else apply_orientation(label, transform)
        return image, label, Reoriented(transform)

    def describe(self) -> dict[str, Any]:
        return {"step": "orientation", "orientation": self.orientation}


class _Crop:
    def __init__(self, threshold: float, margin: int) -> None:
        self.threshold, self.margin = threshold, margin

    def apply(self, image: Volume, label: LabelMap | None, device: Device):
        start, stop = foreground_bbox(image.array, self.threshold, self.margin)
        done = Cropped(start, image.spatial_shape, image.affine)
        image = image.crop(start, stop)
        label = None if label is None else label.crop(start, stop)
        return image, label, done

    def describe(self) -> dict[str, Any]:
        return {"step": "crop", "threshold": self.threshold, "margin": self.margin}


class _Resample:
    def __init__(self, spacing_mm: list[float], interpolation: str) -> None:
        self.spacing_mm, self.interpolation = spacing_mm, interpolation

    def apply(self, image: Volume, label: LabelMap | None, device: Device):
        done = Resampled(image.spatial_shape, image.affine)
        shape, affine = grid_for_spacing(image.spatial_shape, image.affine, self.spacing_mm)
        image = resample_to_grid(image, shape, affine, self.interpolation, device)
        if label is not None:
            label = resample_to_grid(label, shape, affine, device=device)  # nearest: a LabelMap
        return image, label, done

    def describe(self) -> dict[str, Any]:
        return {"step": "resample", "spacing_mm": [float(s) for s in self.spacing_mm],
                "interpolation": self.interpolation}


class _Intensity:
    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def apply(self, image: Volume, label: LabelMap | None, device: Device):
        return image.with_array(apply_intensity(image.array, self.spec)), label, None

    def describe(self) -> dict[str, Any]:
        return {"step": "intensity", **copy.deepcopy(dict(self.spec))}


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
        if "mean_std" in spec:
            _check_mean_std(spec, probe)
        if "clip_percentiles" in spec:
            clip_percentiles(probe, spec["clip_percentiles"])
    except UsageError as err:
        raise ConfigError(f"intensity: {err.message}") from None


def _check_mean_std(spec: Mapping[str, Any], probe: np.ndarray) -> None:
    """``mean_std`` z-scores a CT window: only with mode 'ct', never with 'output_range'."""
    if spec["mode"] != "ct" or "output_range" in spec:
        raise ConfigError(f"intensity 'mean_std' needs mode 'ct' and no 'output_range' (it "
                          f"replaces the scaling to a range), got {dict(spec)!r}")
    ct_window_zscore(probe, spec["window"], spec["mean_std"])
