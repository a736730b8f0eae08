"""Reading nnU-Net's pickled files without running code from them.

nnU-Net v2 stores its checkpoints (``fold_*/checkpoint_*.pth``) with ``torch.save`` and its
post-processing choice (``postprocessing.pkl``) with ``pickle``. Unpickling an arbitrary file
can run any code, so medseg unpickles both with an explicit allow-list of the harmless types
that real nnU-Net files hold and refuses everything else with a
:class:`~medseg.errors.CheckpointError` naming the file and the refused type.

What an nnU-Net checkpoint holds (``nnUNetTrainer.save_checkpoint``): ``network_weights``
(an ``OrderedDict`` of tensors), ``optimizer_state`` and ``grad_scaler_state`` (dicts of
tensors, numbers, None), ``logging`` (lists of Python and numpy floats), ``_best_ema`` (a numpy
float), ``current_epoch``, ``init_args`` (the plans and dataset.json as dicts, the
configuration name, the fold and a ``torch.device``), ``trainer_name`` and
``inference_allowed_mirroring_axes`` (a tuple of ints or None). Beyond what
``torch.load(weights_only=True)`` accepts by itself (tensors, storages, ``OrderedDict``,
``torch.device``, the builtin containers and numbers), that is numpy scalars and dtypes;
numpy arrays are allowed too (nnU-Net versions that log arrays). Checkpoints written under
numpy 1.x name the reconstructors ``numpy.core.multiarray.*`` and those written under numpy 2
``numpy._core.multiarray.*``: both names are accepted.

``postprocessing.pkl`` holds ``(functions, kwargs)``: references to nnU-Net's
``remove_all_but_largest_component_from_segmentation`` and its keyword arguments (label values
as numpy integers). :func:`read_postprocessing` maps the function reference to its name
without importing nnU-Net, or reads the JSON twin nnU-Net writes beside it.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import CheckpointError

__all__ = ["NnunetCheckpoint", "read_checkpoint", "read_pickle", "read_json", "read_postprocessing",
           "NUMPY_GLOBALS"]

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel
_PP_FUNCTION = "remove_all_but_largest_component_from_segmentation"
_PP_NAME = "remove_all_but_largest_component"
_PP_MODULE = "nnunetv2.postprocessing.remove_connected_components"


def _numpy_globals() -> dict[str, object]:
    """The numpy reconstructors a pickled scalar, dtype or array names, under both spellings."""
    scalar = np.float64(0.0).__reduce__()[0]
    reconstruct = np.zeros(1).__reduce__()[0]
    names: dict[str, object] = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for code in np.typecodes["All"]:  # a dtype unpickles as an instance of its class
        dtype_class = type(np.dtype(code))
        names[f"{dtype_class.__module__}.{dtype_class.__name__}"] = dtype_class
    for package in ("numpy.core", "numpy._core"):
        names[f"{package}.multiarray.scalar"] = scalar
        names[f"{package}.multiarray._reconstruct"] = reconstruct
    return names


#: Fully qualified pickle names of the numpy objects medseg unpickles, to the objects.
NUMPY_GLOBALS: dict[str, object] = _numpy_globals()


@dataclass(frozen=True)
class NnunetCheckpoint:
    """The parts of one nnU-Net fold checkpoint that inference needs.

    Attributes
    ----------
    path : Path
        The ``.pth`` file.
    weights : dict of str to torch.Tensor
        ``network_weights`` with the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP)
        prefixes removed, on the CPU.
    mirror_axes : tuple of int or None
        ``inference_allowed_mirroring_axes``: the spatial axes (0-based, in the nnU-Net frame
        (a0, a1, a2), or (a1, a2) for a 2d model) that test-time mirroring may flip; None when
        the checkpoint does not say.
    trainer_name : str
        The trainer class that wrote it ("" when the checkpoint does not say).
    configuration : str or None
        ``init_args["configuration"]`` (e.g. ``"3d_fullres"``) when present.
    """

    path: Path
    weights: dict[str, torch.Tensor] = field(repr=False)
    mirror_axes: tuple[int, ...] | None
    trainer_name: str
    configuration: str | None


def read_checkpoint(path: str | os.PathLike) -> NnunetCheckpoint:
    """Read an nnU-Net v2 ``checkpoint_*.pth`` without executing code from it.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.

    Returns
    -------
    NnunetCheckpoint

    Raises
    ------
    CheckpointError
        Naming ``path``: the file is missing, is not a PyTorch file, holds a pickled type
        outside the allow-list (the message names it), or is not an nnU-Net checkpoint (no
        ``network_weights`` mapping of tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    content = _torch_load(path)
    weights = content.get("network_weights") if isinstance(content, dict) else None
    if not isinstance(weights, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in weights.values()):
        keys = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"not an nnU-Net checkpoint: expected a dict with "
                              f"'network_weights' (a mapping of tensors), found {keys}", path)
    init_args = content.get("init_args")
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    return NnunetCheckpoint(
        path=path,
        weights=_strip_prefixes(weights),
        mirror_axes=_mirror_axes(content.get("inference_allowed_mirroring_axes"), path),
        trainer_name=str(content.get("trainer_name", "")),
        configuration=None if configuration is None else str(configuration),
    )


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with numpy's harmless reconstructors allowed."""
    allowed = [(obj, name) for name, obj in NUMPY_GLOBALS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_globals(path)
        if refused:
            raise CheckpointError(f"holds the pickled type {refused[0]!r}, which medseg does not "
                                  "load (only tensors, numbers, containers and numpy scalars "
                                  "are read from nnU-Net checkpoints)", path) from exc
        raise CheckpointError(f"not a readable PyTorch checkpoint: {_reason(exc)}",
                              path) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable PyTorch checkpoint: {_reason(exc)}",
                              path) from exc


def _refused_globals(path: Path) -> list[str]:
    """The globals ``path``'s pickle names that neither torch nor medseg allows ([] if unknown)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, pickle.UnpicklingError, ValueError, OSError, EOFError):
        return []
    return [name for name in names if name not in NUMPY_GLOBALS]


def _reason(exc: BaseException) -> str:
    """The informative line of an exception's message (torch's own reason, when it gives one)."""
    text = str(exc).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _strip_prefixes(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the wrapper prefixes torch.compile and DDP add to parameter names."""
    stripped = {}
    for key, value in weights.items():
        name = str(key)
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        stripped[name] = value
    return stripped


def _mirror_axes(value: Any, path: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(axis) for axis in value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"inference_allowed_mirroring_axes is {value!r}: expected a "
                              "sequence of axis numbers or None", path) from exc


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names of an allow-list."""

    def __init__(self, file: Any, allowed: Mapping[str, object], path: Path) -> None:
        super().__init__(file)
        self._allowed = allowed
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        raise CheckpointError(f"holds the pickled type {qualified!r}, which medseg does not "
                              "load", self._path)


def read_pickle(path: str | os.PathLike, allowed: Mapping[str, object]) -> Any:
    """Unpickle ``path``, resolving only the global names in ``allowed``.

    Parameters
    ----------
    path : str or os.PathLike
        The pickle file.
    allowed : mapping of str to object
        Fully qualified pickle names (``"module.name"``) to the objects they stand for. Plain
        data (numbers, strings, lists, tuples, dicts) needs no entry. An entry may map a name to
        a harmless stand-in, e.g. a function reference to its name as a string.

    Returns
    -------
    object
        The unpickled content.

    Raises
    ------
    CheckpointError
        Naming ``path``: the file is missing or not a pickle, or it names a global outside
        ``allowed`` (the message names it; nothing of it is imported or called).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("pickle file not found", path)
    with path.open("rb") as file:
        try:
            return _RestrictedUnpickler(file, allowed, path).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError,
                IndexError, KeyError) as exc:
            raise CheckpointError(f"not a readable pickle: {_reason(exc)}", path) from exc


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object from an nnU-Net folder (plans.json, dataset.json, ...).

    Raises
    ------
    CheckpointError
        Naming ``path``: not JSON (nnU-Net v1 pickled its plans), or not a JSON object.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", path) from exc
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not a JSON file ({exc}); nnU-Net v1 pickled its plans, medseg "
                              "reads nnU-Net v2 model folders", path) from exc
    if not isinstance(content, dict):
        raise CheckpointError(f"expected a JSON object, found {type(content).__name__}", path)
    return content


def read_postprocessing(path: str | os.PathLike) -> list[dict]:
    """The post-processing steps nnU-Net chose, from postprocessing.json or .pkl.

    ``determine_postprocessing`` writes the pickle ``(functions, kwargs)`` and a JSON twin
    (``postprocessing_fns`` names, ``postprocessing_kwargs``). The pickle is read with an
    allow-list that maps nnU-Net's one post-processing function to its name (nothing of
    nnU-Net is imported) and numpy scalars to numbers.

    Returns
    -------
    list of dict
        One step per entry, in order: ``{"name": "remove_all_but_largest_component",
        "labels_or_regions": [label values]}``: keep only the largest connected component of
        the union of those label values, setting the rest to background (nnU-Net's single
        label, label list and region tuples all mean that union).

    Raises
    ------
    CheckpointError
        Naming ``path``: unreadable, unsafe, or a step medseg does not know.
    """
    path = Path(path)
    if path.suffix == ".json":
        content = read_json(path)
        steps = zip(content.get("postprocessing_fns", []),
                    content.get("postprocessing_kwargs", []))
    else:
        functions, kwargs = _read_postprocessing_pickle(path)
        steps = zip(functions, kwargs)
    return [_postprocessing_step(name, kwargs, path) for name, kwargs in steps]


def _read_postprocessing_pickle(path: Path) -> tuple[list, list]:
    """``(functions, kwargs)`` of a postprocessing.pkl, functions as their names."""
    allowed: dict[str, object] = {**NUMPY_GLOBALS, f"{_PP_MODULE}.{_PP_FUNCTION}": _PP_FUNCTION}
    content = read_pickle(path, allowed)
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and all(isinstance(part, (list, tuple)) for part in content)):
        raise CheckpointError("expected nnU-Net's (functions, kwargs) pair", path)
    return list(content[0]), list(content[1])


def _postprocessing_step(name: Any, kwargs: Any, source: Path) -> dict:
    if name != _PP_FUNCTION:
        raise CheckpointError(f"unknown post-processing step {name!r}: medseg applies only "
                              f"nnU-Net's {_PP_FUNCTION}", source)
    if not isinstance(kwargs, Mapping) or "labels_or_regions" not in kwargs \
            or set(kwargs) - {"labels_or_regions", "background_label"}:
        raise CheckpointError(f"unexpected arguments of {name}: {kwargs!r}", source)
    if int(kwargs.get("background_label", 0)) != 0:
        raise CheckpointError(f"{name} with a background label other than 0 is not "
                              "supported", source)
    return {"name": _PP_NAME, "labels_or_regions": _flat_labels(kwargs["labels_or_regions"])}


def _flat_labels(value: Any) -> list[int]:
    """nnU-Net's label, label list or list of regions as the sorted label values they cover."""
    if isinstance(value, (list, tuple)):
        return sorted({label for item in value for label in _flat_labels(item)})
    return [int(value)]
