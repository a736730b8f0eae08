"""The model card: everything a trained model needs to be used, in one typed, frozen shape.

A :class:`ModelCard` is produced once from the training config
(:meth:`medseg.config.PipelineConfig.model_card`), stored as JSON in the
checkpoint (:mod:`medseg.checkpoint`) and read back by ``medseg predict``; every
setting it holds is used at prediction time, and nothing else is needed::

    ModelCard(
        model=NetworkSpec("unet3d", in_channels=1, out_channels=6, options={...}),
        preprocessing=Preprocessing({...}),  # typed: medseg.transforms.Preprocessing, or
                                             # medseg.transforms.nnunet.NnunetPreprocessing
        labels={0: "background", 1: "liver", ...},
        channels=("water", "fat"),           # optional: the input channels' names, in order
        window=WindowSettings(roi_size=(96, 96, 96), overlap=0.5, blend="gaussian",
                              batch_size=4, mirror_axes=()),
        postprocess=Postprocess(keep_largest=False),
    )

JSON form (``to_dict`` / ``from_dict``, exact round trip)::

    {"model": {"name": "unet3d", "in_channels": 1, "out_channels": 6, ...options},
     "preprocessing": {...}, "labels": {"0": "background", "1": "liver"},
     "window": {"roi_size": [96, 96, 96], "overlap": 0.5, "blend": "gaussian",
                "batch_size": 4, "mirror_axes": []},
     "postprocess": {"keep_largest": false},
     "channels": ["water", "fat"],  # optional: the input channels' names, in order
     "confidence": {...}}   # optional: medseg.confidence.Confidence (cohort, QC, temperature)

The preprocessing is typed: each kind knows its own ``apply`` (-> the network input and
the History that undoes it) and JSON form (``"kind": "nnunet"`` for nnU-Net's; a plain
config for medseg's), so inference never asks where a model came from. The card therefore
sits just above :mod:`medseg.transforms` in the layers (imported lazily: ``import
medseg.card`` stays cheap).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medseg.errors import CheckpointError, MedsegError, UsageError, check_keywords, check_option

if TYPE_CHECKING:
    from medseg.confidence import Confidence

__all__ = ["BLENDS", "ModelCard", "NetworkSpec", "Postprocess", "WindowSettings"]

#: Weighting of overlapping windows: Gaussian (sigma = roi / 8) or constant; ``"nnunet"``
#: is nnU-Net v2's whole window arithmetic, for imported nnU-Net models
#: (:class:`medseg.inference.windows.NnunetArithmetic`).
BLENDS = ("gaussian", "constant", "nnunet")

Roi = tuple[int, int, int]


def _roi(value: int | Sequence[int]) -> Roi:
    """(x, y, z) window size in voxels from one int (a cube) or three."""
    values = [value] * 3 if isinstance(value, numbers.Integral) else value
    try:
        x, y, z = (int(v) for v in values)  # type: ignore[union-attr]
        ok = (not any(isinstance(v, bool) for v in values)  # type: ignore[union-attr]
              and all(float(v) == int(v) for v in values)  # type: ignore[union-attr]
              and min(x, y, z) >= 1)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"roi_size must be one or three positive voxel counts (x, y, z), "
                         f"got {value!r}")
    return x, y, z


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs over a preprocessed image.

    Attributes
    ----------
    roi_size : window size (x, y, z) in voxels of the preprocessed grid (one int = a cube).
    overlap : fraction in [0, 1) by which neighbouring windows overlap at least.
    blend : ``"gaussian"`` (sigma = roi / 8 per axis, MONAI's map), ``"constant"``, or
        ``"nnunet"``: nnU-Net's placement, Gaussian and float16 accumulation of logits
        (imported nnU-Net models: outputs equal nnUNetPredictor's).
    batch_size : windows per network call (>= 1).
    mirror_axes : spatial axes (0 = x, 1 = y, 2 = z) mirrored for test-time
        augmentation; the outputs of all 2^n flip combinations are averaged. ``()``
        (the default) runs no augmentation.
    """

    roi_size: Roi
    overlap: float = 0.5
    blend: str = "gaussian"
    batch_size: int = 4
    mirror_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi_size", _roi(self.roi_size))
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) \
                or not 0.0 <= overlap < 1.0:
            raise UsageError(f"overlap must be a number in [0, 1), got {overlap!r}")
        object.__setattr__(self, "overlap", float(overlap))
        check_option(self.blend, BLENDS, "blend")
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"batch_size must be a positive int, got {size!r}")
        axes = tuple(self.mirror_axes)
        if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise UsageError(f"mirror_axes must be distinct spatial axes 0, 1, 2 (x, y, z), "
                             f"got {list(self.mirror_axes)}")
        object.__setattr__(self, "mirror_axes", tuple(sorted(int(a) for a in axes)))

    @classmethod
    def of(cls, window: WindowSettings | int | Sequence[int]) -> WindowSettings:
        """``window`` itself, or the default settings for a bare ``roi_size``."""
        return window if isinstance(window, WindowSettings) else cls(_roi(window))

    def replace(self, **changes: Any) -> WindowSettings:
        """A copy with ``changes`` applied (None values leave a setting as it is)."""
        check_keywords(changes, [f.name for f in dataclasses.fields(self)], "WindowSettings")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"roi_size": list(self.roi_size), "overlap": self.overlap, "blend": self.blend,
                "batch_size": self.batch_size, "mirror_axes": list(self.mirror_axes)}


@dataclass(frozen=True)
class Postprocess:
    """What is done to the label map after it is back on the input grid.

    ``keep_largest``: keep only the largest connected component of each label (``True``),
    of none (``False``), or of the listed label values only (a tuple such as ``(1, 3)``,
    for structures that are one piece beside others that may have several; chosen from
    out-of-fold Dice by :func:`medseg.crossval.choose_postprocess`).
    ``min_size_ml``: label value -> volume in mL (cm^3); connected components of that label
    smaller than it become background (JSON keys are strings; ``{}``: none).
    ``largest_of``: nnU-Net's post-processing steps of an imported model, in order: for each
    group of label values, the union of those labels keeps only its largest
    26-connected component(s) (components tied for largest all stay); the group's other
    voxels become background (``()``: none).
    """

    keep_largest: bool | tuple[int, ...] = False
    min_size_ml: Mapping[int, float] = field(default_factory=dict)
    largest_of: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_size_ml", self._sizes(self.min_size_ml))
        object.__setattr__(self, "largest_of", self._groups(self.largest_of))
        value = self.keep_largest
        if isinstance(value, bool):
            return
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise UsageError(f"keep_largest must be true, false or a list of label values "
                             f"(positive integers), got {value!r}")
        labels = tuple(sorted(set(value)))
        object.__setattr__(self, "keep_largest", labels if labels else False)

    @property
    def largest_only(self) -> tuple[int, ...] | None:
        """Labels to reduce to their largest component: None = every label, () = none."""
        value = self.keep_largest
        if isinstance(value, bool):
            return None if value else ()
        return value

    @property
    def active(self) -> bool:
        """Whether the label map changes at all (keep-largest or a minimum size)."""
        return self.largest_only != () or bool(self.min_size_ml) or bool(self.largest_of)

    def to_dict(self) -> dict[str, Any]:
        value = self.keep_largest
        out: dict[str, Any] = {"keep_largest": value if isinstance(value, bool) else list(value)}
        if self.min_size_ml:
            out["min_size_ml"] = {str(k): v for k, v in self.min_size_ml.items()}
        if self.largest_of:
            out["largest_of"] = [list(group) for group in self.largest_of]
        return out

    @staticmethod
    def _groups(value: Any) -> tuple[tuple[int, ...], ...]:
        """``largest_of`` as a tuple of sorted label tuples; UsageError naming what arrived."""
        try:
            groups = tuple(tuple(sorted({int(v) for v in group})) for group in value)
            ok = all(group and all(v > 0 for v in group) for group in groups) and not any(
                isinstance(v, bool) for group in value for v in group)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"largest_of must be a list of lists of label values (positive "
                             f"integers), got {value!r}")
        return groups

    @staticmethod
    def _sizes(value: Any) -> dict[int, float]:
        """``min_size_ml`` as {label value: mL}, sorted; UsageError naming what arrived."""
        bad = UsageError(f"min_size_ml must map label values (positive integers) to volumes in "
                         f"mL (positive numbers), got {value!r}")
        if not isinstance(value, Mapping):
            raise bad
        out = {}
        for key, ml in value.items():
            label = int(key) if isinstance(key, str) and key.isdigit() else key
            if (not isinstance(label, numbers.Integral) or isinstance(label, bool) or label <= 0
                    or not isinstance(ml, numbers.Real) or isinstance(ml, bool)
                    or not 0 < ml < float("inf")):
                raise bad
            out[int(label)] = float(ml)
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class NetworkSpec:
    """A network of the registry :mod:`medseg.models` and its constructor arguments.

    ``options`` holds every other constructor argument at its value (and ``seed``),
    as ``model.medseg_config`` records them; ``medseg.models.build(spec)`` calls
    ``medseg.models.create(name, in_channels, out_channels, **options)``.
    """

    name: str
    in_channels: int
    out_channels: int
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Any) -> NetworkSpec:
        """The spec of a network built by ``medseg.models.create`` (its ``medseg_config``)."""
        config = getattr(model, "medseg_config", None)
        if not isinstance(config, Mapping) or "name" not in config:
            raise UsageError("the model has no medseg_config: build it with "
                             "medseg.models.create")
        return cls.from_dict(config)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> NetworkSpec:
        """From ``model.medseg_config`` (``name``, ``in_channels``, ``out_channels``, options)."""
        rest = {k: v for k, v in config.items() if k not in ("name", "in_channels",
                                                              "out_channels")}
        return cls(str(config["name"]), int(config["in_channels"]),
                   int(config["out_channels"]), rest)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "in_channels": self.in_channels,
                "out_channels": self.out_channels, **self.options}


@dataclass(frozen=True)
class ModelCard:
    """Everything a trained model needs to be used (see the module docstring).

    Attributes
    ----------
    model : the network.
    preprocessing : a typed preprocessing (:class:`medseg.transforms.Preprocessing`, or
        :class:`medseg.transforms.nnunet.NnunetPreprocessing`); a mapping is read as its
        JSON form (:func:`medseg.transforms.kinds.preprocessing_from_dict`).
    labels : label value -> name; 0 (background) always present.
    window : sliding-window settings.
    postprocess : what is done to the label map on the input grid.
    confidence : the training cohort, QC thresholds and calibration temperature
        (:class:`medseg.confidence.Confidence`; a mapping is read as its JSON form); None
        for a model trained before medseg recorded them (QC then works with what it has).
    channels : the names of the input channels in the network's order, as the training
        manifest names them (``channel_names`` / ``modality``: ``("water", "fat")``,
        ``("T2", "ADC")``); empty when it names none. ``predict`` checks DICOM stacks
        given as channels against them.
    """

    model: NetworkSpec
    preprocessing: Any
    labels: Mapping[int, str]
    window: WindowSettings
    postprocess: Postprocess = Postprocess()
    confidence: Confidence | None = None
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        channels = tuple(str(c) for c in self.channels)
        if channels and len(channels) != self.in_channels:
            raise UsageError(f"model card: {len(channels)} channel names {list(channels)} for "
                             f"a network of {self.in_channels} input channel(s)")
        object.__setattr__(self, "channels", channels)
        labels = {int(k): str(v) for k, v in dict(self.labels).items()}
        labels.setdefault(0, "background")
        object.__setattr__(self, "labels", dict(sorted(labels.items())))
        from medseg.transforms.kinds import preprocessing_from_dict

        object.__setattr__(self, "preprocessing", preprocessing_from_dict(self.preprocessing))
        if isinstance(self.confidence, Mapping):
            from medseg.confidence import Confidence

            object.__setattr__(self, "confidence", Confidence.from_dict(self.confidence))

    @property
    def in_channels(self) -> int:
        """Image channels the network takes."""
        return self.model.in_channels

    @property
    def num_classes(self) -> int:
        """Classes K of the network output, background included."""
        return self.model.out_channels

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with whole fields replaced (``window=...``, ``postprocess=...``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (module docstring); :meth:`from_dict` gives back an equal card."""
        out = {"model": self.model.to_dict(), "preprocessing": self.preprocessing.to_dict(),
               "labels": {str(k): v for k, v in self.labels.items()},
               "window": self.window.to_dict(), "postprocess": self.postprocess.to_dict()}
        if self.confidence is not None:
            out["confidence"] = self.confidence.to_dict()
        if self.channels:
            out["channels"] = list(self.channels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  source: str | os.PathLike | None = None) -> ModelCard:
        """Read the JSON form; a missing or malformed entry raises CheckpointError naming
        ``source`` (the checkpoint file) and the entry."""
        try:
            check_keywords(data, ["model", "preprocessing", "labels", "window", "postprocess",
                                  "confidence", "channels"], "model card")
            return cls(NetworkSpec.from_dict(data["model"]), dict(data["preprocessing"]),
                       {int(k): str(v) for k, v in dict(data["labels"]).items()},
                       _window(data["window"]),
                       Postprocess(**dict(data.get("postprocess") or {})),
                       data.get("confidence"), tuple(data.get("channels") or ()))
        except KeyError as exc:
            raise CheckpointError(f"model card lacks {exc}", source) from None
        except (MedsegError, TypeError, ValueError) as exc:
            text = exc.message if isinstance(exc, MedsegError) else str(exc)
            raise CheckpointError(f"model card: {text}", source) from None


def _window(data: Mapping[str, Any]) -> WindowSettings:
    data = dict(data)
    data["mirror_axes"] = tuple(data.get("mirror_axes", ()))
    return WindowSettings(**data)
