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
from medseg.sources.loaded import COMBINES, LoadedModel, check_image, run_checkpoints

__all__ = ["COMBINES", "SOURCES", "LoadedModel", "check_image", "load_model",
           "run_checkpoints"]


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
