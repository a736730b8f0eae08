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
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import CheckpointError

__all__ = ["NnunetCheckpoint", "read_checkpoint", "read_pickle", "NUMPY_GLOBALS"]

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DistributedDataParallel


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
