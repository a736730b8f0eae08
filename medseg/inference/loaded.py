"""A network ready to predict, with its model card: from a checkpoint, or a module and a card.

:func:`load_model` accepts what users hold: a checkpoint path, a loaded
:class:`~medseg.checkpoint.Checkpoint`, or a :class:`LoadedModel` (a bare
``nn.Module`` wrapped with the card that says how to use it).
:func:`check_image` refuses an image the network cannot take before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medseg.card import ModelCard
from medseg.errors import DataError, UsageError
from medseg.runtime import Runtime
from medseg.volume import Volume

__all__ = ["LoadedModel", "load_model", "check_image"]


@dataclass(frozen=True)
class LoadedModel:
    """A network and its model card.

    Attributes
    ----------
    network : maps (B, C, x, y, z) to logits (B, K, x, y, z); put in eval mode on the
        runtime's device by :func:`load_model`.
    card : how to use it (preprocessing, window, labels, post-processing).
    source : where it came from (the checkpoint file), for messages.
    """

    network: nn.Module
    card: ModelCard
    source: str = "model"


def load_model(model: Any, runtime: Runtime) -> LoadedModel:
    """A :class:`LoadedModel` on ``runtime.device`` from a checkpoint path, a
    :class:`~medseg.checkpoint.Checkpoint` or a :class:`LoadedModel`.

    Raises
    ------
    CheckpointError : unreadable or incompatible checkpoint (naming the file).
    UsageError : anything else (a bare ``nn.Module`` needs its card: wrap it as
        ``LoadedModel(module, card)``).
    """
    from medseg.checkpoint import Checkpoint, load_checkpoint

    if isinstance(model, LoadedModel):
        model.network.to(runtime.device).eval()
        return model
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model, device="cpu")
    if isinstance(model, Checkpoint):
        return LoadedModel(model.build_model(runtime.device), model.card, str(model.path))
    hint = (": wrap it with its card, LoadedModel(module, card)"
            if isinstance(model, nn.Module) else "")
    raise UsageError("the model must be a checkpoint path, a medseg Checkpoint or a "
                     f"LoadedModel, got {type(model).__name__}{hint}")


def image_source(volume: Volume) -> str | None:
    """The file or DICOM folder a volume was read from (for error messages), if known."""
    if volume.meta.get("source"):
        return str(volume.meta["source"])
    files = volume.meta.get("dicom_files")
    return str(Path(files[0]).parent) if files else None


def check_image(volume: Volume, model: LoadedModel) -> None:
    """Refuse an image the network cannot take: wrong channel count, NaN or inf voxels.

    Raises
    ------
    DataError naming the image file (and the checkpoint in the message).
    """
    source = image_source(volume)
    channels = volume.shape[0] if volume.has_channels else 1
    expected = model.card.in_channels
    if channels != expected:
        raise DataError(f"checkpoint {model.source} expects {expected} input channels, image "
                        f"has {channels}", source)
    array = volume.array
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(f"image holds {bad} NaN/infinite voxels; fill or mask them before "
                            "predicting", source)
