"""Model sources: the one door through which a trained model reaches inference.

A model source turns what a user holds (a file, a folder, a prefixed name) into a
:class:`~medseg.sources.loaded.LoadedModel`: the network(s), the
:class:`~medseg.card.ModelCard` whose typed preprocessing and window settings decide
everything inference does, and the rule by which an ensemble's members combine.
Inference never asks where a model came from.

* medseg's own checkpoints, run folders and fold ensembles: :mod:`medseg.sources.loaded`;
* nnU-Net v2 trained-model folders (``nnunet:FOLDER``): :mod:`medseg.sources.nnunet`.

A new source (say a MONAI bundle) is a subpackage here with a function ``(model, runtime)
-> LoadedModel | None`` (None: not its kind), listed in :data:`SOURCES`.
"""

from __future__ import annotations

from typing import Any

from medseg.runtime import Runtime
from medseg.sources.channels import check_stack_count
from medseg.sources.loaded import COMBINES, LoadedModel, check_image, run_checkpoints

__all__ = ["COMBINES", "SOURCES", "LoadedModel", "check_image", "check_stack_count",
           "load_model", "run_checkpoints", "save_confidence"]


def _nnunet(model: Any, runtime: Runtime) -> LoadedModel | None:
    """``nnunet:FOLDER`` (or an :class:`~medseg.sources.nnunet.load.NnunetSource`)."""
    from medseg.sources.nnunet.load import NnunetSource, load_nnunet

    source = NnunetSource.parse(model)
    return None if source is None else load_nnunet(source, runtime)


#: The sources other than medseg's own, tried in order on every item a user gives.
SOURCES = (_nnunet,)


def load_model(model: Any, runtime: Runtime) -> LoadedModel:
    """A :class:`LoadedModel` on ``runtime.device`` from anything a source takes: a
    checkpoint path, a run folder, a list of these (an ensemble), a
    :class:`~medseg.checkpoint.Checkpoint`, a LoadedModel, or ``"nnunet:FOLDER"``
    (:func:`medseg.sources.loaded.load_model` states the rules and errors)."""
    from medseg.sources import loaded

    return loaded.load_model(model, runtime, SOURCES)


def save_confidence(model: Any, confidence: Any) -> list[str]:
    """Store ``confidence`` (:class:`medseg.confidence.Confidence`) with the model a user
    holds, so that every later load carries it in its card: into each medseg checkpoint
    (a file, every fold of a run folder, every item of a list; weights kept bit for bit), or
    beside an nnU-Net folder's plans (``medseg_confidence.json``). Returns what was written.

    Raises
    ------
    UsageError : anything else (a LoadedModel in memory: replace its card instead).
    """
    import os

    from medseg.checkpoint import load_checkpoint, update_card
    from medseg.errors import UsageError
    from medseg.sources.loaded import _is_run_folder
    from medseg.sources.nnunet.load import NnunetSource, save_nnunet_confidence

    if isinstance(model, (list, tuple)):
        return [path for item in model for path in save_confidence(item, confidence)]
    nnunet = NnunetSource.parse(model)
    if nnunet is not None:
        return [str(save_nnunet_confidence(nnunet, confidence))]
    if _is_run_folder(model):
        return save_confidence(run_checkpoints(model), confidence)
    if isinstance(model, (str, os.PathLike)):
        card = load_checkpoint(model).card
        return [str(update_card(model, card.replace(confidence=confidence)))]
    raise UsageError(f"cannot store a calibration with a {type(model).__name__}: give a "
                     "checkpoint, a run folder or an nnU-Net folder")
