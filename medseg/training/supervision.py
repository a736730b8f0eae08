"""The training loss over a network's outputs, deep supervision included."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["deep_supervision_loss"]


def deep_supervision_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          output: torch.Tensor | Sequence[torch.Tensor],
                          target: torch.Tensor) -> torch.Tensor:
    """Loss of the main output (B, K, x, y, z) against ``target`` (B, x, y, z), plus the
    deep-supervision outputs (coarser grids, nearest-downsampled targets) weighted 1/2,
    1/4, ..., normalised by the sum of the weights."""
    outputs = list(output) if isinstance(output, (list, tuple)) else [output]
    weights = [0.5**i for i in range(len(outputs))]
    total = torch.zeros((), device=target.device)
    for weight, out in zip(weights, outputs):
        tgt = target
        if out.shape[2:] != target.shape[1:]:
            tgt = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")
            tgt = tgt[:, 0].long()
        total = total + weight * loss_fn(out.float(), tgt)
    return total / sum(weights)
