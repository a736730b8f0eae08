"""Self-describing checkpoints: one ``.safetensors`` file, weights plus a JSON description.

A checkpoint holds the network weights as named tensors and, in the
safetensors metadata entry ``"medseg"``, a JSON document::

    {"format_version": 2, "medseg_version": "0.1.0",
     "card": {...},                 # medseg.card.ModelCard.to_dict(): network, preprocessing,
                                    # labels, sliding-window settings, post-processing
     "train_config": {...}, "epoch": 12, "metrics": {"val_mean_dice": 0.91}}

``medseg predict`` needs nothing else: the :class:`~medseg.card.ModelCard` is
everything a trained model needs to be used. Files of format version 1 (written
before the card existed: ``model``, ``in_channels``, ``out_channels``,
``label_names``, ``preprocessing`` and ``inference`` at the top level) are
still read, into the same card. Loading never unpickles anything: a torch
``.pt``/``.pth`` pickle or zip payload, or any other file, is refused with a
:class:`~medseg.errors.CheckpointError`.

The writer is atomic: a crash while writing leaves the previous file intact.
Training-resume state goes to a second file (:mod:`medseg.training.resume`).
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

from medseg import __version__, models
from medseg.card import ModelCard
from medseg.errors import CheckpointError, MedsegError
from medseg.io.atomic import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_header",
    "update_card",
]

FORMAT_VERSION = 2
_READABLE = (1, 2)
_META_KEY = "medseg"
_V1_REQUIRED = ("model", "in_channels", "out_channels", "label_names", "preprocessing",
                "inference")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_NOT_OURS = "not a medseg safetensors checkpoint"

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A loaded checkpoint: weights plus the model card that says how to use them.

    Attributes
    ----------
    path : the file it was read from.
    state_dict : parameter name -> tensor, on the device given to :func:`load_checkpoint`.
    card : the :class:`~medseg.card.ModelCard` (network, preprocessing, labels, window,
        post-processing).
    train_config, epoch, metrics : how and how far it was trained (informative).
    medseg_version, format_version : what wrote the file.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    medseg_version: str = __version__
    format_version: int = FORMAT_VERSION

    def build_model(self, device: str | torch.device | None = None) -> torch.nn.Module:
        """Rebuild the network of the card and load the weights (strict), in eval mode.

        Raises CheckpointError naming the file when the weights do not fit the network.
        """
        spec = self.card.model
        try:
            model = models.build(spec)
        except (MedsegError, TypeError) as exc:
            text = exc.message if isinstance(exc, MedsegError) else str(exc)
            raise CheckpointError(f"cannot rebuild model {spec.to_dict()}: {text}",
                                  self.path) from exc
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise CheckpointError(
                f"weights do not fit model {spec.name!r}: {' '.join(first)}", self.path
            ) from exc
        if device is not None:
            model.to(device)
        model.eval()
        return model

    def describe(self) -> dict[str, Any]:
        """The JSON description (everything but the weights), in the current format."""
        return {
            "format_version": FORMAT_VERSION,
            "medseg_version": self.medseg_version,
            "card": self.card.to_dict(),
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


def atomic_save(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        _write_safetensors(tensors, meta, tmp)
    return target


def _json(value: Any, path: str | os.PathLike) -> str:
    try:
        return json.dumps(value, allow_nan=True, default=_json_default, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint description is not JSON-serialisable: {exc}",
                              path) from exc


def _check_card_describes(net: torch.nn.Module, card: ModelCard, path: str | os.PathLike
                          ) -> None:
    """The card's network must be the one saved: ``model.medseg_config``, value for value."""
    config = getattr(net, "medseg_config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError("model has no medseg_config (build it with medseg.models.create)",
                              path)
    if _json(config, path) != _json(card.model.to_dict(), path):
        raise CheckpointError(f"the model card describes network {card.model.to_dict()}, but "
                              f"the model saved is {config}", path)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, card: ModelCard, *,
                    train_config: Mapping[str, Any] | None = None, epoch: int = 0,
                    metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and its card to ``path`` (``.safetensors``), atomically.

    Parameters
    ----------
    path : destination file; its folder must exist.
    model : a network built by ``medseg.models.create`` (it carries ``medseg_config``,
        which must equal ``card.model``); DDP and torch.compile wrappers are unwrapped.
    card : the model card (``medseg.config.PipelineConfig.model_card`` builds one).
    train_config, epoch, metrics : optional record of the training.
    """
    net = _unwrap(model)
    _check_card_describes(net, card, path)
    description = {
        "format_version": FORMAT_VERSION,
        "medseg_version": __version__,
        "card": card.to_dict(),
        "train_config": dict(train_config or {}),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
    }
    return atomic_save(path, _cpu_tensors(net.state_dict()), {_META_KEY: _json(description,
                                                                                 path)})


def update_card(path: str | os.PathLike, card: ModelCard) -> Path:
    """Rewrite the model card of the checkpoint ``path`` atomically; the weights are kept
    bit for bit (and the training record as it was).

    The file is rewritten in the current format (a format-1 file becomes format 2). The
    network may not change: a ``card.model`` other than the file's raises CheckpointError.
    """
    checkpoint = load_checkpoint(path)
    if _json(card.model.to_dict(), path) != _json(checkpoint.card.model.to_dict(), path):
        raise CheckpointError(f"update_card: the new card describes network "
                              f"{card.model.to_dict()}, but the checkpoint holds "
                              f"{checkpoint.card.model.to_dict()}", path)
    checkpoint.card = card
    meta = {_META_KEY: _json(checkpoint.describe(), path)}
    return atomic_save(path, checkpoint.state_dict, meta)


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


def load_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt safetensors file: {exc}", path) from exc


def parse_description(path: Path, metadata: Mapping[str, str], key: str = _META_KEY,
                       readable: tuple[int, ...] = (FORMAT_VERSION,)) -> dict[str, Any]:
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
    if version not in readable:
        raise CheckpointError(
            f"checkpoint format_version {version!r} is not supported: this medseg "
            f"({__version__}) reads format_version {', '.join(map(str, readable))}",
            path,
        )
    return description


def _card_from_v1(description: Mapping[str, Any], path: Path) -> ModelCard:
    """The card of a format-1 file (settings at the top level; ``inference`` dict)."""
    missing = [k for k in _V1_REQUIRED if k not in description]
    if missing:
        raise CheckpointError(f"checkpoint description lacks {', '.join(missing)}", path)
    model = description["model"]
    if not isinstance(model, dict) or "name" not in model:
        raise CheckpointError("checkpoint 'model' entry is not a dict with a 'name'", path)
    inference = dict(description["inference"])
    keep = bool(inference.pop("keep_largest", False))
    window = {k: inference[k] for k in ("roi_size", "overlap", "blend", "batch_size")
              if k in inference}
    return ModelCard.from_dict({
        "model": {**model, "in_channels": description["in_channels"],
                  "out_channels": description["out_channels"]},
        "preprocessing": description["preprocessing"],
        "labels": description["label_names"], "window": window,
        "postprocess": {"keep_largest": keep},
    }, path)


def _card(description: Mapping[str, Any], path: Path) -> ModelCard:
    if description["format_version"] == 1:
        return _card_from_v1(description, path)
    if not isinstance(description.get("card"), dict):
        raise CheckpointError("checkpoint description lacks its 'card'", path)
    return ModelCard.from_dict(description["card"], path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (format 2, or format 1 from
    earlier medseg versions); never unpickles.

    Raises CheckpointError naming the file when it is not a safetensors file
    (pickle, zip, truncated, garbage), lacks the medseg description or one of
    its entries, or has an unsupported ``format_version``.
    """
    path = Path(path)
    description = parse_description(path, read_header(path), readable=_READABLE)
    card = _card(description, path)
    return Checkpoint(
        path=path,
        state_dict=load_tensors(path, device),
        card=card,
        train_config=dict(description.get("train_config") or {}),
        epoch=int(description.get("epoch") or 0),
        metrics=dict(description.get("metrics") or {}),
        medseg_version=str(description.get("medseg_version", "unknown")),
        format_version=int(description["format_version"]),
    )
