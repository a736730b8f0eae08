"""What a :class:`~medseg.transforms.pipeline.Preprocessing` did to one volume, and its undoing.

:class:`History` travels with the preprocessed data (TorchIO's ``applied_transforms``):
the input grid, the output grid, and one applied step per geometric change, each of
which undoes itself:

* :class:`Reoriented` -- axes permuted/flipped (exact);
* :class:`Cropped` -- cut out of a larger grid (padded back with the volume's background);
* :class:`Resampled` -- moved from another grid (interpolated back), by its resampling
  *rule*: medseg's torch engine (:class:`GridResampling`, any device) or nnU-Net's
  separable matrices (:class:`~medseg.transforms.resample_nnunet.NnunetResampling`,
  nnU-Net's numbers bit for bit); both have the same two methods.

Every inverse dispatches on the volume's type, never on a string: a
:class:`~medseg.volume.LabelMap` goes back by nearest neighbour and is padded with 0,
:class:`~medseg.volume.Probabilities` go back linearly and are padded with certain
background (1 in channel 0). :class:`~medseg.volume.Logits` (models whose outputs are
resampled before their activation: nnU-Net's export) go back linearly and become
probabilities right after the step that resampled them, as the history's
:class:`Activation` says (softmax, or a sigmoid per region), before any padding.
:meth:`History.restore_labels` is the one way a network output comes back as a label map
on the input grid.

Shapes are voxels (x, y, z); affines map voxel indices to RAS+ mm and are kept as
tuples of Python floats, so that :meth:`History.to_dict` is JSON and round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from medseg.argmax import argmax_channels, argmax_labels, label_dtype, torch_label_dtype
from medseg.errors import DataError, GeometryError, UsageError, check_option
from medseg.transforms.crop import uncrop
from medseg.transforms.orientation import apply_orientation, invert_orientation
from medseg.transforms.resample import resample_to_grid
from medseg.transforms.resample_argmax import resample_argmax
from medseg.transforms.resample_nnunet import NnunetResampling
from medseg.volume import LabelMap, Logits, Probabilities, RegionProbabilities

__all__ = ["Activation", "Cropped", "GridResampling", "History", "Reoriented", "Resampled",
           "Step"]

Device = str | torch.device | None
Affine = tuple[tuple[float, ...], ...]
Typed = LabelMap | Probabilities | Logits


def _as_affine(affine: Any) -> Affine:
    """A (4, 4) affine as a tuple of four tuples of Python floats (hashable, exact in JSON)."""
    array = np.asarray(affine, dtype=np.float64)
    if array.shape != (4, 4):
        raise DataError(f"a history affine must be 4 x 4, got shape {array.shape}")
    return tuple(tuple(float(v) for v in row) for row in array)


def _as_shape(shape: Any) -> tuple[int, ...]:
    """A shape (or voxel index) as a tuple of Python ints."""
    return tuple(int(n) for n in shape)


def _as_ornt(transform: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row) for row in np.asarray(transform))


def _parsed(parse: Callable[[Any], Any], **kwargs: Any) -> Any:
    """A dataclass field whose value (array, list, JSON) ``parse`` turns into the stored one."""
    return field(metadata={"parse": parse}, **kwargs)


class _Parsed:
    """Dataclass base: each field is passed through its parser on construction (arrays and
    lists become tuples of Python numbers: hashable, comparable, exact in JSON)."""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            object.__setattr__(self, f.name, f.metadata["parse"](getattr(self, f.name)))


def _typed(volume: Any, where: str) -> Typed:
    """``volume`` if it is a LabelMap, Probabilities or Logits (the type picks the inverse),
    else raise."""
    if isinstance(volume, (LabelMap, Probabilities, Logits)):
        return volume
    got = type(volume).__name__
    if hasattr(volume, "shape"):
        got += f" of shape {tuple(volume.shape)}"
    raise UsageError(
        f"{where} needs a LabelMap (x, y, z) or Probabilities (K, x, y, z), got {got}: the type "
        "decides the interpolation; wrap a network output as e.g. "
        "LabelMap(array, history.output_affine)"
    )


class _Step(_Parsed):
    """Shared serialisation: ``{"step": name, field: JSON value, ...}``."""

    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (tuples as lists)."""
        return {"step": self.name, **{f.name: _listed(getattr(self, f.name))
                                      for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The step :meth:`to_dict` described."""
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls)  # type: ignore[arg-type]
                          if f.name in data})
        except (KeyError, TypeError, ValueError) as exc:
            names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            raise DataError(f"history step {cls.name!r} needs {names}, got {dict(data)!r}") from exc


def _listed(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


@dataclass(frozen=True)
class GridResampling:
    """medseg's resampling engine as a rule of :class:`Resampled`: torch, on any device,
    between grids given by their affines (:func:`~medseg.transforms.resample.resample_to_grid`:
    a LabelMap by nearest neighbour, Probabilities linearly; labels slab by slab through
    :func:`~medseg.transforms.resample_argmax.resample_argmax`)."""

    name: ClassVar[str] = "grid"

    def resample(self, volume: Typed, shape: Any, affine: np.ndarray,
                 device: Device = None) -> Typed:
        return resample_to_grid(volume, shape, affine, device=device)  # type: ignore[return-value]

    def resample_to_labels(self, volume: Typed, shape: Any, affine: np.ndarray,
                           device: Device, labels_of: Callable, dtype: np.dtype) -> LabelMap:
        """The argmax of the linearly resampled probabilities, slab by slab (``labels_of``
        and ``dtype``: the argmax's, as :func:`resample_argmax` computes them)."""
        if not isinstance(volume, Probabilities) or isinstance(volume, RegionProbabilities):
            raise UsageError(f"the grid rule makes labels of softmax Probabilities, got "
                             f"{type(volume).__name__}")
        return resample_argmax(volume, shape, affine, device)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name}


def _as_rule(value: Any) -> GridResampling | NnunetResampling:
    """A resampling rule from itself, None (the grid rule) or its JSON form."""
    if isinstance(value, (GridResampling, NnunetResampling)):
        return value
    name = "grid" if value is None else dict(value).get("rule", "grid")
    name = check_option(name, ("grid", "nnunet"), "resampling rule", DataError)
    return GridResampling() if name == "grid" else NnunetResampling.from_dict(value)


@dataclass(frozen=True)
class Activation:
    """How :class:`~medseg.volume.Logits` become probabilities and labels once resampled
    (nnU-Net's export).

    ``regions_class_order`` None: exclusive classes, softmax over channels (channel 0 =
    background), labels their argmax (taken of the logits themselves: softmax keeps the
    order). Else a region-based model: a sigmoid per channel (region), and each region's
    label painted, in this order, where its probability exceeds 0.5.
    """

    regions_class_order: tuple[int, ...] | None = None

    def probabilities(self, logits: Logits) -> Probabilities:
        """float32 Probabilities (RegionProbabilities for regions) on the logits' grid."""
        values = torch.from_numpy(np.ascontiguousarray(logits.array)).float()
        if self.regions_class_order is None:
            return Probabilities(torch.softmax(values, 0).numpy(), logits.affine, logits.meta)
        return RegionProbabilities(torch.sigmoid(values).numpy(), logits.affine, logits.meta)

    def labels_of_logits(self, block: np.ndarray) -> np.ndarray:
        """Labels of (K, ...) logits (any float dtype)."""
        values = torch.from_numpy(np.ascontiguousarray(block)).float()  # float16 exactly
        if self.regions_class_order is not None:
            values = torch.sigmoid(values)
        return self._labels(values)

    def labels_of_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Labels of (K, ...) float probabilities: argmax, or regions painted."""
        if self.regions_class_order is None:
            return argmax_labels(probabilities)
        return self._labels(torch.from_numpy(np.ascontiguousarray(probabilities)))

    def label_dtype(self, channels: int) -> np.dtype:
        order = self.regions_class_order
        return label_dtype(channels if order is None else max(order, default=0) + 1)

    def _labels(self, values: torch.Tensor) -> np.ndarray:
        """The first maximum of float32 values (a running maximum: np.argmax over axis 0 is
        several times slower), or each region's label where its value exceeds 0.5."""
        order = self.regions_class_order
        if order is None:
            out = torch.empty(values.shape[1:], dtype=torch_label_dtype(len(values)))
            return argmax_channels(values, out).numpy()
        inside = values.numpy() > 0.5
        labels = np.zeros(values.shape[1:], dtype=self.label_dtype(len(values)))
        for region, label in enumerate(order):
            labels[inside[region]] = label
        return labels

    def to_dict(self) -> dict[str, Any]:
        order = self.regions_class_order
        return {"regions_class_order": None if order is None else list(order)}


def _as_activation(value: Any) -> Activation | None:
    if value is None or isinstance(value, Activation):
        return value
    order = dict(value).get("regions_class_order")
    return Activation(None if order is None else tuple(int(v) for v in order))


@dataclass(frozen=True)
class Reoriented(_Step):
    """The axes were permuted/flipped by ``transform``, a (3, 2) nibabel "ornt" array."""

    transform: tuple[tuple[int, ...], ...] = _parsed(_as_ornt)
    name: ClassVar[str] = "orientation"

    def invert(self, volume: Typed, device: Device = None) -> Typed:
        """``volume`` with the axes put back (exact, either type; ``device`` unused)."""
        volume = _typed(volume, "Reoriented.invert")
        return apply_orientation(volume, invert_orientation(np.asarray(self.transform)))


@dataclass(frozen=True)
class Cropped(_Step):
    """The box starting at voxel ``start`` was cut out of the grid ``(shape, affine)``."""

    start: tuple[int, ...] = _parsed(_as_shape)
    shape: tuple[int, ...] = _parsed(_as_shape)
    affine: Affine = _parsed(_as_affine)
    name: ClassVar[str] = "crop"

    def invert(self, volume: Typed, device: Device = None) -> Typed:
        """``volume`` padded back to ``(shape, affine)`` with its type's background: 0 for a
        LabelMap, one-hot background for Probabilities (``device`` unused)."""
        volume = _typed(volume, "Cropped.invert")
        if volume.spatial_shape == self.shape and not any(self.start):  # the whole grid
            return type(volume)(volume.array, np.asarray(self.affine), volume.meta)
        array = uncrop(volume.array, self.shape, self.start, volume.background)
        return type(volume)(array, np.asarray(self.affine), volume.meta)


@dataclass(frozen=True)
class Resampled(_Step):
    """The volume was resampled from the grid ``(shape, affine)``; ``rule`` resamples it
    back (:class:`GridResampling` unless stated)."""

    shape: tuple[int, ...] = _parsed(_as_shape)
    affine: Affine = _parsed(_as_affine)
    rule: GridResampling | NnunetResampling = _parsed(_as_rule, default=None)
    name: ClassVar[str] = "resample"

    def invert(self, volume: Typed, device: Device = None) -> Typed:
        """``volume`` resampled back onto ``(shape, affine)``, as its type says: a LabelMap
        by nearest neighbour (dtype kept), Probabilities and Logits linearly."""
        volume = _typed(volume, "Resampled.invert")
        return self.rule.resample(volume, self.shape, np.asarray(self.affine), device)

    def invert_to_labels(self, output: Probabilities | Logits, device: Device = None,
                         activation: Activation | None = None) -> LabelMap:
        """The labels of ``invert(output)``, slab by slab: the argmax of Probabilities, or
        Logits' labels as ``activation`` says."""
        activation = activation or Activation()
        labels_of = (activation.labels_of_logits if isinstance(output, Logits)
                     else activation.labels_of_probabilities)
        return self.rule.resample_to_labels(output, self.shape, np.asarray(self.affine),
                                            device, labels_of,
                                            activation.label_dtype(output.shape[0]))


Step = Reoriented | Cropped | Resampled
_STEPS: dict[str, type] = {cls.name: cls for cls in (Reoriented, Cropped, Resampled)}


@dataclass(frozen=True)
class History(_Parsed):
    """The input grid, the output grid and the applied steps of one preprocessing run.

    Attributes
    ----------
    input_shape, input_affine : the grid the image came on ((x, y, z) voxels, 4 x 4 RAS+ mm).
    output_shape, output_affine : the preprocessed grid.
    steps : the applied geometric steps, in the order they ran.
    activation : how Logits become probabilities after the resampling step (None: the
        network's outputs come as Probabilities or a LabelMap, medseg's own models).
    """

    input_shape: tuple[int, ...] = _parsed(_as_shape)
    input_affine: Affine = _parsed(_as_affine)
    output_shape: tuple[int, ...] = _parsed(_as_shape)
    output_affine: Affine = _parsed(_as_affine)
    steps: tuple[Step, ...] = _parsed(tuple, default=())
    activation: Activation | None = _parsed(_as_activation, default=None)

    @property
    def resamples(self) -> bool:
        """True when some step resampled (so the inverse interpolates)."""
        return any(isinstance(step, Resampled) for step in self.steps)

    def invert(self, volume: Typed, device: Device = None) -> Typed:
        """``volume`` from the preprocessed grid back onto exactly the input grid.

        Parameters
        ----------
        volume : LabelMap (x', y', z') or Probabilities (K, x', y', z') on the
            output grid. Its type decides: a LabelMap goes back by nearest neighbour
            (dtype kept) and is padded with 0; Probabilities linearly, padded with
            one-hot background.
        device : where resampling runs (e.g. ``"cuda"``); the result is NumPy.

        Returns
        -------
        The same type with shape :attr:`input_shape` and exactly :attr:`input_affine`.

        Raises
        ------
        UsageError : ``volume`` is neither a LabelMap nor Probabilities.
        GeometryError : ``volume`` is not on the output grid.
        """
        current = self._check_output(volume, "History.invert")
        for step in reversed(self.steps):
            current = step.invert(current, device)
            if isinstance(step, Resampled):
                current = self._activated(current)
        return self._on_input_grid(self._activated(current))

    def labels_of(self, probabilities: Probabilities) -> LabelMap:
        """The label map of probabilities on any grid: their argmax, or for a region-based
        model (:attr:`activation`) each region painted in order."""
        labels = (self.activation or Activation()).labels_of_probabilities(probabilities.array)
        return LabelMap(labels, probabilities.affine, probabilities.meta)

    def _activated(self, volume: Typed) -> Typed:
        """Logits as probabilities (:attr:`activation`); other types as they are."""
        if isinstance(volume, Logits):
            return (self.activation or Activation()).probabilities(volume)
        return volume

    def restore_labels(self, output: Typed, device: Device = None) -> LabelMap:
        """A network output as a label map on exactly the input grid.

        A LabelMap (x', y', z') goes back by nearest neighbour. Probabilities
        (K, x', y', z') are interpolated linearly and reduced to labels slab by slab at
        the resampling step (never (K, x, y, z) on the input grid), or by argmax at the
        end when nothing resamples; either way the labels equal the argmax of
        ``invert(output)`` (up to float32 ties), as :func:`medseg.argmax.label_dtype`.

        Raises
        ------
        UsageError : ``output`` is neither a LabelMap nor Probabilities (bare arrays too).
        GeometryError : ``output`` is not on the output grid.
        """
        current = self._check_output(output, "History.restore_labels")
        for step in reversed(self.steps):
            if isinstance(current, (Probabilities, Logits)) and isinstance(step, Resampled):
                current = step.invert_to_labels(current, device, self.activation)
            else:
                current = step.invert(self._activated(current), device)
        if not isinstance(current, LabelMap):
            current = self.labels_of(self._activated(current))
        return self._on_input_grid(current)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (lists and floats); :meth:`from_dict` restores it exactly."""
        return {
            "input_shape": list(self.input_shape),
            "input_affine": _listed(self.input_affine),
            "output_shape": list(self.output_shape),
            "output_affine": _listed(self.output_affine),
            "steps": [step.to_dict() for step in self.steps],
            "activation": None if self.activation is None else self.activation.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """The History :meth:`to_dict` described (e.g. read back from JSON)."""
        steps = []
        for entry in data["steps"]:
            name = check_option(entry.get("step"), list(_STEPS), "history step", DataError)
            steps.append(_STEPS[name].from_dict(entry))
        return cls(data["input_shape"], data["input_affine"], data["output_shape"],
                   data["output_affine"], tuple(steps), data.get("activation"))

    def _check_output(self, volume: Any, where: str) -> Typed:
        volume = _typed(volume, where)
        if volume.spatial_shape != tuple(self.output_shape) or not np.allclose(
            volume.affine, np.asarray(self.output_affine), atol=1e-3, rtol=0
        ):
            raise GeometryError(
                f"{where} needs a volume on the preprocessed grid: expected spatial shape "
                f"{list(self.output_shape)} and affine {np.asarray(self.output_affine).tolist()}"
                f", got shape {list(volume.shape)} and affine {volume.affine.tolist()}"
            )
        return volume

    def _on_input_grid(self, volume: Typed) -> Typed:
        """``volume`` with exactly the input affine (the inverses agree to rounding)."""
        return type(volume)(volume.array, np.asarray(self.input_affine), volume.meta)
