"""An nnU-Net v2 trained-model folder as a medseg model: its card, its folds, its import.

``medseg predict -m nnunet:FOLDER`` and ``medseg import nnunet:FOLDER -o model.safetensors``
come here. The folder (:mod:`medseg.sources.nnunet.folder`) gives the plans, dataset.json and the
selected folds' checkpoints (read without unpickling code, :mod:`medseg.sources.nnunet.safe_load`);
:func:`nnunet_card` turns them into one :class:`~medseg.card.ModelCard`:

* ``model``: ``NetworkSpec("nnunet", C, K, {architecture, dims, folds})``, i.e.
  :class:`medseg.models.nnunet.NnunetFolds`;
* ``preprocessing``: :class:`medseg.transforms.nnunet.NnunetPreprocessing` (``kind: nnunet``);
* ``labels``: dataset.json's label names;
* ``window``: the plans' patch size in the window frame (nnU-Net's axes reversed), overlap
  0.5 (nnU-Net's step size), ``blend="nnunet"``, one window per call (as nnU-Net, so that
  convolutions see the same batch), and mirroring over the checkpoint's allowed axes
  (nnU-Net mirrors by default; ``--no-tta`` turns it off);
* ``postprocess``: the folder's post-processing, when it has one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.card import ModelCard, NetworkSpec, Postprocess, WindowSettings
from medseg.errors import CheckpointError, MedsegError, UsageError
from medseg.runtime import Runtime

__all__ = ["CONFIDENCE_FILE", "PREFIX", "NnunetSource", "import_nnunet", "load_nnunet",
           "nnunet_card", "save_nnunet_confidence"]

log = logging.getLogger(__name__)

PREFIX = "nnunet:"
CHECKPOINTS = ("final", "best")


@dataclass(frozen=True)
class NnunetSource:
    """Which nnU-Net model to use: its trained-model folder, folds and checkpoint.

    ``folds``: fold names ("0", "1", ..., "all"), or None for every fold the folder holds;
    ``checkpoint``: ``"final"`` (checkpoint_final.pth) or ``"best"`` (checkpoint_best.pth).
    """

    path: Path
    folds: tuple[str, ...] | None = None
    checkpoint: str = "final"

    @classmethod
    def parse(cls, text: Any, folds: Sequence[int | str] | str | None = None,
              checkpoint: str = "final") -> NnunetSource | None:
        """``nnunet:FOLDER`` as a source (None for anything else). ``folds``: a comma list
        ("0,1,2"; "all" is fold_all, as in nnUNetv2_predict), a sequence, or None (every
        numbered fold, else fold_all)."""
        if isinstance(text, NnunetSource):
            return text
        if not isinstance(text, (str, os.PathLike)) or not str(text).startswith(PREFIX):
            return None
        if checkpoint not in CHECKPOINTS:
            raise UsageError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, "
                             f"got {checkpoint!r}")
        return cls(Path(str(text)[len(PREFIX):]).expanduser(), _folds(folds), checkpoint)


def _folds(folds: Sequence[int | str] | str | None) -> tuple[str, ...] | None:
    """``--folds`` text ("0,1,2", "all" for fold_all) or a sequence as fold names; None
    keeps :meth:`NnunetFolder.open <medseg.sources.nnunet.folder.NnunetFolder.open>`'s default
    (every numbered fold, else fold_all), which also checks the names."""
    if folds is None:
        return None
    items = folds.split(",") if isinstance(folds, str) else list(folds)
    return tuple(str(f).strip() for f in items)


def nnunet_card(folder: Any, mirror_axes: Sequence[int] | None) -> ModelCard:
    """The model card of an opened :class:`medseg.sources.nnunet.folder.NnunetFolder` whose
    checkpoints allow mirroring over ``mirror_axes`` (nnU-Net's frame; None: none, as
    nnUNetPredictor reads a checkpoint without them, e.g. nnUNetTrainerNoMirroring's)."""
    from medseg.models.nnunet_network import architecture_of
    from medseg.transforms.nnunet import NnunetPreprocessing

    config = folder.configuration_plans
    patch = [int(p) for p in config["patch_size"]]
    dims = len(patch)
    roi = tuple(reversed(patch)) + ((1,) if dims == 2 else ())
    axes = () if mirror_axes is None else tuple(int(a) for a in mirror_axes)
    window = WindowSettings(roi, 0.5, "nnunet", 1, tuple(dims - 1 - a for a in axes))
    architecture = architecture_of(config, folder.path / "plans.json")
    network = NetworkSpec("nnunet", folder.num_inputs, folder.num_outputs,
                          {"architecture": architecture, "dims": dims,
                           "folds": len(folder.checkpoints)})
    preprocessing = NnunetPreprocessing.from_plans(folder.plans, folder.configuration,
                                                   folder.dataset, folder.path / "plans.json")
    return ModelCard(network, preprocessing, folder.label_names(), window,
                     _postprocess(folder), channels=folder.channel_names)


def _postprocess(folder: Any) -> Postprocess:
    """nnU-Net's post-processing steps (each: keep the largest component of the union of
    some labels) as the card's ``largest_of``."""
    steps = folder.postprocessing() or []
    return Postprocess(largest_of=tuple(tuple(step["labels_or_regions"]) for step in steps))


def load_nnunet(source: NnunetSource, runtime: Runtime):  # -> LoadedModel
    """The folds of the nnU-Net model ``source`` as a medseg ensemble on ``runtime.device``."""
    from medseg.sources.loaded import LoadedModel

    module, card = _build(source)
    module.to(runtime.device).eval()
    return LoadedModel(tuple(module.members), card, f"{PREFIX}{source.path}", module.combine)


def import_nnunet(source: NnunetSource, output: str | os.PathLike) -> Path:
    """Write the nnU-Net model ``source`` as one self-describing medseg checkpoint (every
    selected fold's weights and the card), atomically; returns the path."""
    from medseg.checkpoint import save_checkpoint
    from medseg.io.atomic import ensure_parent

    module, card = _build(source)
    ensure_parent(output)
    return save_checkpoint(output, module, card,
                           train_config={"imported_from": str(source.path),
                                         "folds": list(module.fold_names)})


#: medseg's confidence of an nnU-Net folder (training cohort, QC thresholds, temperature:
#: :class:`medseg.confidence.Confidence` as JSON), written by ``medseg calibrate`` beside its
#: plans.json and read into the card on loading.
CONFIDENCE_FILE = "medseg_confidence.json"


def _with_confidence(card: ModelCard, folder: Any) -> ModelCard:
    """``card`` with the folder's :data:`CONFIDENCE_FILE`, when there is one."""
    import json

    from medseg.confidence import Confidence

    path = Path(folder) / CONFIDENCE_FILE
    if not path.is_file():
        return card
    try:
        return card.replace(confidence=Confidence.from_dict(json.loads(path.read_text())))
    except (ValueError, KeyError, TypeError, MedsegError) as exc:
        text = exc.message if isinstance(exc, MedsegError) else str(exc)
        raise CheckpointError(f"unreadable medseg confidence: {text}", path) from None


def save_nnunet_confidence(source: NnunetSource, confidence: Any) -> Path:
    """Write ``confidence`` as the folder's :data:`CONFIDENCE_FILE` (atomic)."""
    import json

    from medseg.io.atomic import atomic_write_text

    path = Path(source.path) / CONFIDENCE_FILE
    atomic_write_text(path, json.dumps(confidence.to_dict(), indent=1) + "\n")
    return path


def _build(source: NnunetSource):
    from medseg import models
    from medseg.sources.nnunet.folder import NnunetFolder

    folder = NnunetFolder.open(source.path, source.folds, source.checkpoint)
    checkpoints = folder.read_checkpoints()
    card = _with_confidence(nnunet_card(folder, checkpoints[0].mirror_axes), source.path)
    module = models.create("nnunet", card.in_channels, card.num_classes,
                           **dict(card.model.options))
    for member, checkpoint in zip(module.members, checkpoints):
        try:
            member.network.load_state_dict(checkpoint.weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"weights do not fit the network the plans describe: "
                                  f"{first}", checkpoint.path) from None
    module.fold_names = tuple(folder.folds)
    log.info("nnU-Net model %s (%s, folds %s)", folder.path, folder.configuration,
             ", ".join(folder.folds))
    return module, card
