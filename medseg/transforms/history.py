"""What a :class:`~medseg.transforms.pipeline.Preprocessing` did to one volume, and its undoing.

:class:`History` travels with the preprocessed data (TorchIO's ``applied_transforms``):
the input grid, the output grid, and one applied step per geometric change, each of
which undoes itself:

* :class:`Reoriented` -- axes permuted/flipped (exact);
* :class:`Cropped` -- cut out of a larger grid (padded back with the volume's background);
* :class:`Resampled` -- moved from another grid (interpolated back).

Every inverse dispatches on the volume's type, never on a string: a
:class:`~medseg.volume.LabelMap` goes back by nearest neighbour and is padded with 0,
:class:`~medseg.volume.Probabilities` go back linearly and are padded with certain
background (1 in channel 0). :meth:`History.restore_labels` is the one way a network
output comes back as a label map on the input grid.

Shapes are voxels (x, y, z); affines map voxel indices to RAS+ mm and are kept as
tuples of Python floats, so that :meth:`History.to_dict` is JSON and round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from medseg.argmax import argmax_labels
from medseg.errors import DataError, GeometryError, UsageError, check_option
from medseg.transforms.crop import uncrop
from medseg.transforms.orientation import apply_orientation, invert_orientation
from medseg.transforms.resample import resample_to_grid
from medseg.transforms.resample_argmax import resample_argmax
from medseg.volume import LabelMap, Probabilities

__all__ = ["Cropped", "History", "Reoriented", "Resampled", "Step"]

Device = str | torch.device | None
Affine = tuple[tuple[float, ...], ...]
Typed = LabelMap | Probabilities


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
    """``volume`` if it is a LabelMap or Probabilities (the type picks the inverse), else raise."""
    if isinstance(volume, (LabelMap, Probabilities)):
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
            return cls(**{f.name: data[f.name] for f in fields(cls)})  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            raise DataError(f"history step {cls.name!r} needs {names}, got {dict(data)!r}") from exc


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, tuple) else value


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
        array = uncrop(volume.array, self.shape, self.start, volume.background)
        return type(volume)(array, np.asarray(self.affine), volume.meta)


@dataclass(frozen=True)
class Resampled(_Step):
    """The volume was resampled from the grid ``(shape, affine)``."""

    shape: tuple[int, ...] = _parsed(_as_shape)
    affine: Affine = _parsed(_as_affine)
    name: ClassVar[str] = "resample"

    def invert(self, volume: Typed, device: Device = None) -> Typed:
        """``volume`` resampled back onto ``(shape, affine)``, as its type says: a LabelMap
        by nearest neighbour (dtype kept), Probabilities linearly."""
        volume = _typed(volume, "Resampled.invert")
        return resample_to_grid(volume, self.shape, np.asarray(self.affine), device=device)

    def invert_to_labels(self, probabilities: Probabilities, device: Device = None) -> LabelMap:
        """The argmax of ``invert(probabilities)``, slab by slab (:func:`resample_argmax`)."""
        return resample_argmax(probabilities, self.shape, np.asarray(self.affine), device)


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
    """

    input_shape: tuple[int, ...] = _parsed(_as_shape)
    input_affine: Affine = _parsed(_as_affine)
    output_shape: tuple[int, ...] = _parsed(_as_shape)
    output_affine: Affine = _parsed(_as_affine)
    steps: tuple[Step, ...] = _parsed(tuple, default=())

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
        return self._on_input_grid(current)

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
            if isinstance(current, Probabilities) and isinstance(step, Resampled):
                current = step.invert_to_labels(current, device)
            else:
                current = step.invert(current, device)
        if isinstance(current, Probabilities):
            current = LabelMap(argmax_labels(current.array), current.affine, current.meta)
        return self._on_input_grid(current)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (lists and floats); :meth:`from_dict` restores it exactly."""
        return {
            "input_shape": list(self.input_shape),
            "input_affine": _listed(self.input_affine),
            "output_shape": list(self.output_shape),
            "output_affine": _listed(self.output_affine),
            "steps": [step.to_dict() for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        """The History :meth:`to_dict` described (e.g. read back from JSON)."""
        steps = []
        for entry in data["steps"]:
            name = check_option(entry.get("step"), list(_STEPS), "history step", DataError)
            steps.append(_STEPS[name].from_dict(entry))
        return cls(data["input_shape"], data["input_affine"], data["output_shape"],
                   data["output_affine"], tuple(steps))

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
