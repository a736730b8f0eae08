"""The network as a predictor callable for the sliding window, under the runtime's precision.

The precision policy itself (which autocast dtype for which device and ``amp``
switch) is :mod:`medseg.runtime`'s one table. Logits always leave the predictor
as float32, so stitching and softmax are fp32 whatever the network ran in.

An ensemble's predictor returns probabilities instead: per window batch, the mean over
its members of softmax(logits), in float32
(:func:`mean_softmax` of the members' predictors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from medseg.runtime import Runtime

__all__ = ["Predictor", "make_predictor", "mean_softmax"]

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def make_predictor(model: nn.Module, runtime: Runtime) -> Predictor:
    """Window batch (B, C, x, y, z) -> float32 logits (B, K, x, y, z), in ``runtime.precision``."""
    log.debug("network runs in %s on %s", runtime.precision, runtime.device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            return model(batch).float()

    return run


def mean_softmax(members: Sequence[Predictor]) -> Predictor:
    """Window batch -> float32 probabilities: the mean over ``members`` (logits predictors,
    any backend) of softmax(logits) over channels; one member's output at a time beside
    the running sum, both float32 (B, K, x, y, z)."""
    log.debug("ensemble of %d networks: mean softmax per window batch", len(members))

    def run(batch: torch.Tensor) -> torch.Tensor:
        total = torch.softmax(members[0](batch), dim=1)
        for member in members[1:]:
            total += torch.softmax(member(batch), dim=1)
        return total.div_(len(members))

    return run
