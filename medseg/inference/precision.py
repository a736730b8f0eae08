"""The network as a predictor callable for the sliding window, under the runtime's precision.

The precision policy itself (which autocast dtype for which device and ``amp``
switch) is :mod:`medseg.runtime`'s one table. Logits always leave the predictor
as float32, so stitching and softmax are fp32 whatever the network ran in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from medseg.runtime import Runtime

__all__ = ["Predictor", "make_predictor"]

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def make_predictor(model: nn.Module, runtime: Runtime) -> Predictor:
    """Window batch (B, C, x, y, z) -> float32 logits (B, K, x, y, z), in ``runtime.precision``."""
    log.debug("network runs in %s on %s", runtime.precision, runtime.device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(batch).float()

    return run
