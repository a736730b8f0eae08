"""nnU-Net networks in medseg's window frame, and the folds of one model as one module.

medseg's sliding window runs an nnU-Net model on its array with nnU-Net's axes reversed
(the *window frame*: window axis x is nnU-Net's axis 2, z its axis 0), so that medseg's
z-outer window order is nnU-Net's axis-0-outer order and the float16 sums agree
(:mod:`medseg.inference.sliding_window`). :class:`WindowFrameNetwork` turns each window
back into nnU-Net's frame for the network and its output back into the window frame; a 2d
network takes windows one voxel deep along z (nnU-Net's slices along axis 0).

:class:`NnunetFolds` holds the folds of a model as one module (one checkpoint file, keys
``members.<i>.network.<nnU-Net key>``); :func:`medseg.sources.load_model` unpacks
its ``members`` into an ensemble.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["NnunetFolds", "WindowFrameNetwork"]


class WindowFrameNetwork(nn.Module):
    """An nnU-Net network (input (n, C, a0, a1, a2), or (n, C, a1, a2) in 2d) taking windows
    (n, C, x, y, z) of the window frame and giving logits (n, K, x, y, z) in it.

    The window is made contiguous in nnU-Net's frame before the network sees it, as
    nnU-Net's predictor does, so that the convolutions see the same memory layout.
    """

    def __init__(self, network: nn.Module, dims: int) -> None:
        super().__init__()
        self.network = network
        self.dims = int(dims)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        x = window.permute(0, 1, 4, 3, 2).contiguous(memory_format=torch.contiguous_format)
        if self.dims == 2:
            out = self.network(x[:, :, 0].contiguous())[:, :, None]
        else:
            out = self.network(x)
        return out.permute(0, 1, 4, 3, 2)


class NnunetFolds(nn.Module):
    """The folds of one nnU-Net model: ``members[i]`` is fold i's
    :class:`WindowFrameNetwork`, all built from one (new-style) architecture description
    ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}`` of nnU-Net's plans."""

    #: How the members combine in an ensemble (:data:`medseg.sources.loaded.COMBINES`).
    combine = "mean_logits"

    def __init__(self, in_channels: int, out_channels: int, architecture: Mapping[str, Any],
                 dims: int = 3, folds: int = 1) -> None:
        from medseg.models.nnunet_network import build_network

        super().__init__()
        self.members = nn.ModuleList(
            WindowFrameNetwork(build_network({"architecture": dict(architecture)},
                                             in_channels, out_channels), dims)
            for _ in range(int(folds)))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """The mean of the members' logits (the ensemble runs members one by one instead)."""
        total = self.members[0](window)
        for member in self.members[1:]:
            total = total + member(window)
        return total / len(self.members)
