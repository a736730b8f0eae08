"""The steps of ``predict_case`` for an nnU-Net model card (``preprocessing.kind == "nnunet"``).

:func:`prepare` runs nnU-Net's preprocessing (:mod:`medseg.nnunet.preprocess`) and hands the
sliding window the array in the window frame (nnU-Net's axes reversed, see
:mod:`medseg.nnunet.model`); :func:`logits` runs every fold's sliding window and averages
their float16 logits as nnUNetPredictor does (the sum in float16, then the division);
:class:`Restore` takes those logits back to the input grid through nnU-Net's export rules,
slab by slab (:class:`medseg.nnunet.preprocess.NnunetHistory`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medseg.card import ModelCard, WindowSettings
from medseg.runtime import Runtime
from medseg.volume import LabelMap, Probabilities, Volume

__all__ = ["Prepared", "Restore", "logits", "prepare"]

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """nnU-Net's preprocessed image as the window takes it, and the way back.

    ``image``: float32 tensor (C, x, y, z) of the window frame (nnU-Net's (C, a0, a1, a2)
    with the spatial axes reversed).
    """

    image: torch.Tensor
    history: Restore


class Restore:
    """Network-grid logits (K, x, y, z) in the window frame -> labels or probabilities on the
    input Volume's grid, with its affine and meta (nnU-Net's export, memory-bounded)."""

    def __init__(self, history: Any, volume: Volume) -> None:
        self.history, self.volume = history, volume

    def restore_labels(self, logits: torch.Tensor, device=None) -> LabelMap:
        labels = self.history.labels(_nnunet_frame(logits))
        return LabelMap(labels, self.volume.affine, self.volume.meta)

    def export(self, logits: torch.Tensor) -> tuple[np.ndarray, Probabilities]:
        """Labels (x, y, z) and Probabilities of the same logits in one pass (nnU-Net's
        export with probabilities: the labels come from them)."""
        labels, probabilities = self.history.export(_nnunet_frame(logits))
        return labels, Probabilities(probabilities, self.volume.affine, self.volume.meta)


def prepare(volume: Volume, card: ModelCard) -> Prepared:
    """nnU-Net's preprocessing of ``volume`` as ``card.preprocessing`` describes it."""
    from medseg.nnunet.preprocess import NnunetPreprocessing

    prepared = NnunetPreprocessing.from_dict(card.preprocessing).apply(volume)
    image = torch.from_numpy(np.ascontiguousarray(prepared.image)).permute(0, 3, 2, 1)
    log.debug("nnU-Net preprocessing: %s -> %s (nnU-Net frame)", volume.shape,
              tuple(prepared.image.shape))
    return Prepared(image, Restore(prepared.history, volume))


def logits(networks: Sequence[nn.Module], image: torch.Tensor, window: WindowSettings,
           runtime: Runtime, progress: bool = False) -> torch.Tensor:
    """The members' mean float16 logits (K, x, y, z) on the network grid, on the CPU.

    Each member runs its own sliding window (nnU-Net's arithmetic, ``window.blend ==
    "nnunet"``); their outputs are summed in float16 and divided by their number, as
    nnUNetPredictor averages folds. Peak memory: two (K, x, y, z) float16 arrays beside the
    image.
    """
    with torch.inference_mode():
        total = _fold_logits(networks[0], image, window, runtime, progress)
        for network in networks[1:]:
            total.add_(_fold_logits(network, image, window, runtime, progress))
        if len(networks) > 1:
            total.div_(len(networks))
    return total


def _fold_logits(network: nn.Module, image: torch.Tensor, window: WindowSettings,
                 runtime: Runtime, progress: bool) -> torch.Tensor:
    from medseg.inference.precision import make_predictor
    from medseg.inference.sliding_window import sliding_window

    return sliding_window(make_predictor(network, runtime), image[None], window,
                          device=runtime.device, progress=progress)[0].cpu()


def _nnunet_frame(logits: torch.Tensor) -> torch.Tensor:
    """(K, x, y, z) of the window frame -> (K, a0, a1, a2) of nnU-Net's frame."""
    return logits.permute(0, 3, 2, 1)
