"""Training-resume state in a safetensors file, without pickle.

``last.resume.safetensors`` holds what ``medseg train --resume`` needs beyond the
weights: optimizer, LR schedule, grad scaler, RNG states, epoch, sampler state
and history. Its tensors are stored by name and every non-tensor part as JSON
metadata (entry ``"medseg_resume"``). The writer is atomic.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.checkpoint import atomic_save, load_tensors, parse_description, read_header
from medseg.errors import CheckpointError

__all__ = ["save_resume_state", "load_resume_state", "rng_states", "restore_rng_states"]

_RESUME_KEY = "medseg_resume"
_RESUME_VERSION = 1  # the resume file's own format, independent of the checkpoint's


class _Flattener:
    """Turn nested Python state into JSON plus named tensors, and back.

    Tensors become ``{"__tensor__": name}``; NumPy arrays ``{"__ndarray__": name}``
    (stored as tensors); tuples ``{"__tuple__": [...]}``; dicts with non-string
    keys ``{"__items__": [[key, value], ...]}`` so that the round trip is exact.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, value: Any, name: str) -> Any:
        if isinstance(value, torch.Tensor):
            self.tensors[name] = value.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"__ndarray__": name}
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            return value.item()
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{name}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{name}.{i}") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: self.encode(v, f"{name}.{k}") for k, v in value.items()}
            return {"__items__": [[k, self.encode(v, f"{name}.{k}")] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise CheckpointError(f"resume state entry {name!r} of type {type(value).__name__} "
                              "cannot be stored without pickle")

    @staticmethod
    def decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
        if isinstance(value, list):
            return [_Flattener.decode(v, tensors) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_Flattener.decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {_hashable(k): _Flattener.decode(v, tensors) for k, v in value["__items__"]}
        return {k: _Flattener.decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_resume_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write nested training state (dicts, lists, tuples, tensors, arrays, scalars) atomically.

    Typical keys: ``model`` (state_dict), ``optimizer`` (state_dict), ``scheduler``,
    ``scaler``, ``rng`` ({"torch": uint8 tensor, "numpy": ..., "python": ...}),
    ``epoch``, ``sampler``. Tensors are stored by dotted name, the rest as JSON
    in the ``"medseg_resume"`` metadata entry. No pickle is involved.
    """
    flat = _Flattener()
    tree = flat.encode(dict(state), "s")
    text = json.dumps({"format_version": _RESUME_VERSION, "state": tree}, allow_nan=True)
    return atomic_save(path, flat.tensors, {_RESUME_KEY: text})


def load_resume_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_resume_state`; the exact nested structure comes back."""
    path = Path(path)
    document = parse_description(path, read_header(path), key=_RESUME_KEY,
                                  readable=(_RESUME_VERSION,))
    if "state" not in document:
        raise CheckpointError("resume file lacks its 'state' entry", path)
    tensors = load_tensors(path, device)
    try:
        return _Flattener.decode(document["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"resume file lacks tensor {exc}", path) from exc


def rng_states() -> dict[str, Any]:
    """The global torch, NumPy and Python RNG states (for :func:`save_resume_state`)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Set the global RNGs back to ``states`` from :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
