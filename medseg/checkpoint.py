"""Self-describing checkpoints: one ``.safetensors`` file, weights plus a JSON description.

A checkpoint holds the network weights as named tensors and, in the
safetensors metadata entry ``"medseg"``, a JSON document::

    {"format_version": 1, "medseg_version": "0.1.0",
     "model": {...},                # model.medseg_config: medseg.models.create(**model)
     "in_channels": 1, "out_channels": 6,
     "label_names": {"1": "liver", ...},
     "preprocessing": {...},        # Preprocessing.to_config()
     "inference": {"roi_size": [96, 96, 96], "overlap": 0.5},
     "train_config": {...}, "epoch": 12, "metrics": {"val_mean_dice": 0.91}}

``medseg predict`` needs nothing else. Loading never unpickles anything: a torch
``.pt``/``.pth`` pickle or zip payload, or any other file, is refused with a
:class:`~medseg.errors.CheckpointError`.

Training-resume state (optimizer, LR schedule, grad scaler, RNG states, epoch,
sampler state) goes to a second safetensors file, ``last.resume.safetensors``:
its tensors are stored by name and every non-tensor part as JSON metadata, see
:func:`save_resume_state` / :func:`load_resume_state`. Both writers are atomic:
a crash while writing leaves the previous file intact.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg import __version__
from medseg.errors import CheckpointError
from medseg.io.atomic import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "save_resume_state",
    "load_resume_state",
    "read_header",
]

FORMAT_VERSION = 1
_META_KEY = "medseg"
_REQUIRED = (
    "format_version", "medseg_version", "model", "in_channels", "out_channels",
    "label_names", "preprocessing", "inference",
)
_OPTIONAL = {"train_config": dict, "epoch": int, "metrics": dict}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_NOT_OURS = "not a medseg safetensors checkpoint"

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights plus everything needed to rebuild and use the model.

    Attributes
    ----------
    path : the file it was read from.
    state_dict : parameter name -> tensor, on the device given to :func:`load_checkpoint`.
    model : ``model.medseg_config``, rebuilt with ``medseg.models.create(**model)``.
    in_channels, out_channels : image channels in, classes out (background included).
    label_names : label value (as a string, JSON keys) -> name; 0 is background.
    preprocessing : ``Preprocessing.to_config()`` used in training.
    inference : sliding-window settings, ``roi_size`` (voxels) and ``overlap``.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    model: dict[str, Any]
    in_channels: int
    out_channels: int
    label_names: dict[str, str]
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    medseg_version: str = __version__
    format_version: int = FORMAT_VERSION

    def build_model(self, device: str | torch.device | None = None) -> torch.nn.Module:
        """Rebuild the network with ``medseg.models.create`` and load the weights (strict).

        Raises CheckpointError naming the file when the weights do not fit the network.
        """
        from medseg import models

        config = dict(self.model)
        try:
            model = models.create(**config)
        except TypeError as exc:
            raise CheckpointError(f"cannot rebuild model from {config}: {exc}", self.path) from exc
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise CheckpointError(
                f"weights do not fit model {config.get('name')!r}: {' '.join(first)}", self.path
            ) from exc
        if device is not None:
            model.to(device)
        model.eval()
        return model

    def describe(self) -> dict[str, Any]:
        """The JSON description (everything but the weights)."""
        return {
            "format_version": self.format_version,
            "medseg_version": self.medseg_version,
            "model": self.model,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "label_names": self.label_names,
            "preprocessing": self.preprocessing,
            "inference": self.inference,
            "train_config": self.train_config,
            "epoch": self.epoch,
            "metrics": self.metrics,
        }


# -- writing ---------------------------------------------------------------------------------
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network under DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write one safetensors file (a separate function so tests can simulate a crash)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _atomic_save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        _write_safetensors(tensors, meta, tmp)
    return target


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
    """Write ``model``'s weights and its description to ``path`` (``.safetensors``), atomically.

    Parameters
    ----------
    path : destination file; its folder must exist.
    model : a network built by ``medseg.models.create`` (it carries ``medseg_config``);
        DDP and torch.compile wrappers are unwrapped.
    meta : ``label_names`` ({value: name}), ``preprocessing`` (dict), ``inference``
        ({"roi_size": [x, y, z] voxels, "overlap": float}); optional ``train_config``,
        ``epoch``, ``metrics``; ``in_channels``/``out_channels`` default to the model's.
    """
    net = _unwrap(model)
    config = getattr(net, "medseg_config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(
            "model has no medseg_config (build it with medseg.models.create)", path
        )
    description = {
        "format_version": FORMAT_VERSION,
        "medseg_version": __version__,
        "model": dict(config),
        "in_channels": int(meta.get("in_channels", config.get("in_channels", 0))),
        "out_channels": int(meta.get("out_channels", config.get("out_channels", 0))),
        "label_names": {str(k): str(v) for k, v in dict(meta.get("label_names", {})).items()},
        "preprocessing": dict(meta.get("preprocessing") or {}),
        "inference": dict(meta.get("inference") or {}),
        "train_config": dict(meta.get("train_config") or {}),
        "epoch": int(meta.get("epoch", 0)),
        "metrics": dict(meta.get("metrics") or {}),
    }
    try:
        text = json.dumps(description, allow_nan=True, default=_json_default)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint description is not JSON-serialisable: {exc}", path) from exc
    return _atomic_save(path, _cpu_tensors(net.state_dict()), {_META_KEY: text})


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(np.asarray(value).tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# -- reading ---------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    """Describe what a non-safetensors file looks like (for the error message)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a torch.save .pt/.pth file, which holds a pickle)"
    if head[:1] == b"\x80":
        return "a Python pickle (torch.save legacy format)"
    return "neither safetensors nor anything medseg reads"


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """Validate the safetensors framing of ``path`` and return its metadata (str -> str).

    Reads only the 8-byte length and the JSON header; never unpickles.
    Raises CheckpointError "not a medseg safetensors checkpoint" otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file does not exist", path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{_NOT_OURS}: file has only {size} bytes", path)
        (length,) = struct.unpack("<Q", raw)
        if length < 2 or length > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{_NOT_OURS}: the file is {_sniff(path)}", path)
        header_bytes = handle.read(length)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{_NOT_OURS}: the file is {_sniff(path)}", path) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{_NOT_OURS}: header is not a JSON object", path)
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def _load_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt safetensors file: {exc}", path) from exc


def _parse_description(path: Path, metadata: Mapping[str, str], key: str = _META_KEY) -> dict[str, Any]:
    if key not in metadata:
        raise CheckpointError(
            f"{_NOT_OURS}: safetensors file without the {key!r} metadata entry "
            "(weights saved by another tool; medseg needs the model description)",
            path,
        )
    try:
        description = json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"the {key!r} metadata is not valid JSON: {exc}", path) from exc
    if not isinstance(description, dict):
        raise CheckpointError(f"the {key!r} metadata is not a JSON object", path)
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format_version {version!r} is not supported: this medseg "
            f"({__version__}) reads format_version {FORMAT_VERSION}",
            path,
        )
    return description


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; never unpickles.

    Raises CheckpointError naming the file when it is not a safetensors file
    (pickle, zip, truncated, garbage), lacks the medseg description or one of
    its keys, or has an unsupported ``format_version``.
    """
    path = Path(path)
    description = _parse_description(path, read_header(path))
    missing = [k for k in _REQUIRED if k not in description]
    if missing:
        raise CheckpointError(f"checkpoint description lacks {', '.join(missing)}", path)
    if not isinstance(description["model"], dict) or "name" not in description["model"]:
        raise CheckpointError("checkpoint 'model' entry is not a dict with a 'name'", path)
    extras = {k: description.get(k, t()) for k, t in _OPTIONAL.items()}
    return Checkpoint(
        path=path,
        state_dict=_load_tensors(path, device),
        model=description["model"],
        in_channels=int(description["in_channels"]),
        out_channels=int(description["out_channels"]),
        label_names={str(k): str(v) for k, v in description["label_names"].items()},
        preprocessing=description["preprocessing"],
        inference=description["inference"],
        train_config=extras["train_config"] or {},
        epoch=int(extras["epoch"] or 0),
        metrics=extras["metrics"] or {},
        medseg_version=str(description["medseg_version"]),
        format_version=int(description["format_version"]),
    )


# -- resume state ----------------------------------------------------------------------------
_RESUME_KEY = "medseg_resume"


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
    text = json.dumps({"format_version": FORMAT_VERSION, "state": tree}, allow_nan=True)
    return _atomic_save(path, flat.tensors, {_RESUME_KEY: text})


def load_resume_state(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_resume_state`; the exact nested structure comes back."""
    path = Path(path)
    document = _parse_description(path, read_header(path), key=_RESUME_KEY)
    if "state" not in document:
        raise CheckpointError("resume file lacks its 'state' entry", path)
    tensors = _load_tensors(path, device)
    try:
        return _Flattener.decode(document["state"], tensors)
    except KeyError as exc:
        raise CheckpointError(f"resume file lacks tensor {exc}", path) from exc
