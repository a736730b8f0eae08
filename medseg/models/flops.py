"""Parameter and FLOP counts of a network on one patch.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which
records every convolution (transposed included) and matrix product dispatched
during one forward pass, at 2 FLOPs per multiply-accumulate. Normalisation,
activations, pooling and interpolation are not counted (they are a few percent).
The pass runs on the ``meta`` device (no memory, no compute) when every
operator supports it, otherwise on the CPU without gradients.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_parameters", "count_flops"]

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(
    model: nn.Module, patch: Sequence[int], in_channels: int, batch: int = 1,
    backward: bool = False,
) -> int:
    """FLOPs of one forward (and, with ``backward=True``, backward) pass.

    Parameters
    ----------
    model : network taking (B, in_channels, x, y, z).
    patch : (x, y, z) voxels.
    batch : B.
    backward : also count the backward pass of ``output.sum()``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = (batch, in_channels, *patch)
    try:
        probe = copy.deepcopy(model).to("meta").eval()
        x = torch.zeros(shape, device="meta")
        return _count(probe, x, backward, FlopCounterMode)
    except (NotImplementedError, RuntimeError) as exc:  # an operator without a meta kernel
        log.debug("meta FLOP count failed (%s); counting on the CPU", exc)
    probe = copy.deepcopy(model).to("cpu").eval()
    return _count(probe, torch.zeros(shape), backward, FlopCounterMode)


def _count(model: nn.Module, x: torch.Tensor, backward: bool, mode_cls) -> int:
    counter = mode_cls(display=False)
    with counter:
        if backward:
            out = model(x)
            out = out[0] if isinstance(out, list) else out
            out.sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return int(counter.get_total_flops())
