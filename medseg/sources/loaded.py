"""Networks ready to predict, with their model card: one checkpoint, a fold ensemble, or a module.

:class:`LoadedModel` is what every model source gives inference: the networks, the card,
and how the members of an ensemble combine (:data:`COMBINES`). :func:`load_model` is
medseg's own source: a checkpoint path, a cross-validation run folder (every
``fold_*/best.safetensors``, else that fold's ``last.safetensors``), a list of checkpoints,
a loaded :class:`~medseg.checkpoint.Checkpoint`, or a :class:`LoadedModel` (a bare
``nn.Module`` wrapped with the card that says how to use it); other sources (nnU-Net
folders) come through :func:`medseg.sources.load_model`. :func:`check_image` refuses an
image the network cannot take before any work.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medseg.card import ModelCard
from medseg.errors import CheckpointError, DataError, UsageError, check_option
from medseg.runtime import Runtime
from medseg.volume import Volume

__all__ = ["COMBINES", "LoadedModel", "load_model", "check_image", "run_checkpoints"]

log = logging.getLogger(__name__)

#: Checkpoint of each fold of a run folder, in order of preference.
FOLD_CHECKPOINTS = ("best.safetensors", "last.safetensors")

#: How the members of an ensemble combine. ``"mean_softmax"`` (medseg's fold runs): per
#: window batch, the mean over members of softmax(logits), which the window then blends
#: (memory: one (K, x, y, z) float32 accumulator, as one network). ``"mean_logits"``
#: (nnU-Net's folds): each member's whole sliding window gives float16 logits, summed in
#: float16 and divided by their number, as nnUNetPredictor does (memory: two (K, x, y, z)
#: float16 arrays, the same bytes). One member is the same under both rules.
COMBINES = ("mean_softmax", "mean_logits")


@dataclass(frozen=True)
class LoadedModel:
    """One network, or the members of an ensemble, and the model card they share.

    ``LoadedModel(module, card)`` wraps one network; ``LoadedModel((a, b, c), card)``
    an ensemble whose members all take ``card``'s preprocessing, labels and window.

    Attributes
    ----------
    networks : the members, each mapping (B, C, x, y, z) to logits (B, K, x, y, z); put in
        eval mode on the runtime's device by :func:`load_model`. A single ``nn.Module`` is
        stored as a one-member tuple.
    card : how to use them (preprocessing, window, labels, post-processing).
    source : where they came from (the checkpoint file or files), for messages.
    combine : how an ensemble's members combine, one of :data:`COMBINES`.
    """

    networks: tuple[nn.Module, ...]
    card: ModelCard
    source: str = "model"
    combine: str = "mean_softmax"

    def __post_init__(self) -> None:
        check_option(self.combine, COMBINES, "ensemble combine")
        nets = (self.networks,) if isinstance(self.networks, nn.Module) else self.networks
        nets = tuple(nets)
        if not nets or not all(isinstance(n, nn.Module) for n in nets):
            raise UsageError("LoadedModel needs an nn.Module or a non-empty sequence of them, "
                             f"got {type(self.networks).__name__}")
        object.__setattr__(self, "networks", nets)

    @property
    def network(self) -> nn.Module:
        """The network of a single model (UsageError for an ensemble: use ``networks``)."""
        if len(self.networks) != 1:
            raise UsageError(f"{self.source} is an ensemble of {len(self.networks)} networks: "
                             "use LoadedModel.networks")
        return self.networks[0]

    @property
    def is_ensemble(self) -> bool:
        """More than one member, combined as :attr:`combine` says."""
        return len(self.networks) > 1


#: A model source other than medseg's own: what a user holds -> a LoadedModel, or None
#: when it is not that source's kind (:data:`medseg.sources.SOURCES`).
Source = Callable[[Any, Runtime], "LoadedModel | None"]


def load_model(model: Any, runtime: Runtime, sources: Sequence[Source] = ()) -> LoadedModel:
    """A :class:`LoadedModel` on ``runtime.device``.

    Parameters
    ----------
    model : a checkpoint path (``.safetensors``); a run folder holding
        ``fold_*/best.safetensors`` (else each fold's ``last.safetensors``): the fold
        ensemble; a list or tuple of any of these: their ensemble; a
        :class:`~medseg.checkpoint.Checkpoint`; or a :class:`LoadedModel`; or anything one
        of ``sources`` takes.
    runtime : the device the networks are moved to.
    sources : other model sources, tried first on each item in order.

    Ensemble members must agree on input channels, classes, labels, preprocessing and
    window settings; post-processing is the first member's (members written by one
    cross-validation run share it).

    Raises
    ------
    CheckpointError : unreadable or incompatible checkpoint (naming the file); ensemble
        members whose cards differ (naming both files and the first setting that differs);
        a run folder with no fold checkpoint.
    UsageError : anything else (a bare ``nn.Module`` needs its card: wrap it as
        ``LoadedModel(module, card)``).
    """
    if isinstance(model, (list, tuple)) or _is_run_folder(model):
        items = run_checkpoints(model) if _is_run_folder(model) else list(model)
        if not items:
            raise UsageError("an ensemble needs at least one checkpoint, got an empty list")
        return _ensemble([_load_one(item, runtime, sources) for item in items])
    return _load_one(model, runtime, sources)


def _load_one(model: Any, runtime: Runtime, sources: Sequence[Source]) -> LoadedModel:
    from medseg.checkpoint import Checkpoint, load_checkpoint

    for source in sources:
        found = source(model, runtime)
        if found is not None:
            return found
    if isinstance(model, LoadedModel):
        for network in model.networks:
            network.to(runtime.device).eval()
        return model
    if isinstance(model, (list, tuple)) or _is_run_folder(model):
        return load_model(model, runtime, sources)
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model, device="cpu")
    if isinstance(model, Checkpoint):
        network = model.build_model(runtime.device)
        members = getattr(network, "members", None)  # the folds of one file (nnU-Net import)
        networks = tuple(members) if isinstance(members, nn.ModuleList) else network
        return LoadedModel(networks, model.card, str(model.path),
                           getattr(network, "combine", COMBINES[0]))
    hint = (": wrap it with its card, LoadedModel(module, card)"
            if isinstance(model, nn.Module) else "")
    raise UsageError("the model must be a checkpoint path, a run folder, a list of "
                     f"checkpoints, a medseg Checkpoint or a LoadedModel, got "
                     f"{type(model).__name__}{hint}")


# -- ensembles -------------------------------------------------------------------------------
def _is_run_folder(model: Any) -> bool:
    return isinstance(model, (str, os.PathLike)) and Path(model).is_dir()


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint of every ``fold_*`` folder of a cross-validation run, in fold order:
    its ``best.safetensors``, else its ``last.safetensors``; a single training run folder
    (no ``fold_*``) gives its own best, else last, checkpoint.

    Raises
    ------
    CheckpointError naming the folder: no checkpoint in it, or a fold with neither file.
    """
    run = Path(run_dir)
    folds = sorted((p for p in run.glob("fold_*") if p.is_dir()), key=_fold_order)
    own = next((run / name for name in FOLD_CHECKPOINTS if (run / name).is_file()), None)
    if not folds and own is not None:
        return [own]
    if not folds:
        raise CheckpointError("not a checkpoint: a folder must be a training run holding "
                              "best.safetensors / last.safetensors, or a cross-validation run "
                              "holding fold_*/best.safetensors or fold_*/last.safetensors",
                              run)
    found = []
    for fold in folds:
        path = next((fold / name for name in FOLD_CHECKPOINTS if (fold / name).is_file()), None)
        if path is None:
            raise CheckpointError(f"fold {fold.name} holds neither {' nor '.join(FOLD_CHECKPOINTS)}"
                                  " (still training? give the checkpoints with -m instead)", run)
        found.append(path)
    log.info("ensemble of %d folds: %s", len(found), ", ".join(str(p) for p in found))
    return found


def _fold_order(path: Path) -> tuple[int, str]:
    """fold_2 before fold_10: by the number after ``fold_``, then by name."""
    match = re.fullmatch(r"fold_(\d+)", path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def _ensemble(members: Sequence[LoadedModel]) -> LoadedModel:
    """One LoadedModel of every member's networks, under the first member's card."""
    first = members[0]
    for other in members[1:]:
        _check_same_settings(first, other)
        if other.card.postprocess != first.card.postprocess:
            log.warning("ensemble: %s and %s differ in post-processing; using %s's",
                        first.source, other.source, first.source)
    networks = tuple(n for member in members for n in member.networks)
    source = first.source if len(members) == 1 else ", ".join(m.source for m in members)
    return LoadedModel(networks, first.card, source, first.combine)


def _check_same_settings(a: LoadedModel, b: LoadedModel) -> None:
    """Refuse members that would not predict on the same grid, window and classes."""
    left, right = _settings(a.card), _settings(b.card)
    for name in list(left) + [k for k in right if k not in left]:
        if left.get(name, "<unset>") != right.get(name, "<unset>"):
            raise CheckpointError(
                f"ensemble members differ in {name}: {left.get(name, '<unset>')!r} in "
                f"{a.source}, {right.get(name, '<unset>')!r} in {b.source}; members must share "
                "input channels, labels, preprocessing and window settings")


def _settings(card: ModelCard) -> dict[str, Any]:
    """The card's settings that ensemble members must share, as ``name -> value``."""
    settings: dict[str, Any] = {"input channels": card.in_channels,
                                "classes": card.num_classes, "labels": dict(card.labels)}
    settings.update(_flatten("preprocessing", card.preprocessing.to_dict()))
    settings.update(_flatten("window", card.window.to_dict()))
    return settings


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf value) pairs of a nested mapping, keys in sorted order."""
    if not isinstance(value, Mapping) or not value:
        yield prefix, value
        return
    for key in sorted(value, key=str):
        yield from _flatten(f"{prefix}.{key}", value[key])


def image_source(volume: Volume) -> str | None:
    """The file or DICOM folder a volume was read from (for error messages), if known."""
    if volume.meta.get("source"):
        return str(volume.meta["source"])
    files = volume.meta.get("dicom_files")
    return str(Path(files[0]).parent) if files else None


def check_image(volume: Volume, model: LoadedModel) -> None:
    """Refuse an image the network cannot take: wrong channel count, NaN or inf voxels,
    DICOM stacks given as channels in another order than the card's channel names say
    (:mod:`medseg.sources.channels`).

    Raises
    ------
    DataError naming the image file (and the checkpoint in the message).
    UsageError
        stacks in another order than the card's channel names (names the right order).
    """
    from medseg.sources.channels import channels_text, stack_order_problem

    source = image_source(volume)
    channels = volume.shape[0] if volume.has_channels else 1
    stacks = volume.meta.get("channel_stacks")
    if channels != model.card.in_channels:
        hint = ("; a DICOM input gives one stack per channel with --stack K|NAME, repeated in "
                "the model's channel order" if stacks else "")
        raise DataError(f"checkpoint {model.source} expects {channels_text(model.card)}, image "
                        f"has {channels} channel{'s' if channels != 1 else ''}{hint}", source)
    problem = stack_order_problem(stacks or [], model.card.channels)
    if problem:
        raise UsageError(f"{problem} (model {model.source})", source)
    array = volume.array
    if array.dtype.kind in "fc":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(f"image holds {bad} NaN/infinite voxels; fill or mask them before "
                            "predicting", source)
