"""``unet3d``: a configurable 3D U-Net (nnU-Net-like plain convolutional encoder/decoder).

With ``kernel=(3, 3, 1)`` and no pooling along z (``pool`` factors ``(2, 2, 1)``) it is a
per-slice 2D U-Net (nnU-Net's ``2d`` configuration): every convolution, normalisation and
up-convolution of a one-slice input sees that slice only, so a 1-slice patch or window is a
2D image (the weights are those of a 2D U-Net with 3 x 3 kernels).

Accepts **any input size**: the input is zero-padded at the end of each axis
to the next multiple of the total pooling factor on that axis and the logits
are cropped back, so (B, C, x, y, z) always gives (B, K, x, y, z).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import UsageError, check_option
from medseg.models.blocks import (
    UPSAMPLE_MODES,
    ConvNormAct,
    Triple,
    UpSample,
    as_triple,
    network_style,
    check_positive_int,
)

__all__ = ["UNet3d", "DOWNSAMPLE_MODES"]

log = logging.getLogger(__name__)
DOWNSAMPLE_MODES = ("conv", "maxpool")


def _resolve_pool(pool: Any, depth: int) -> list[Triple]:
    """One (x, y, z) pooling factor per downsampling step (``depth - 1`` of them)."""
    if isinstance(pool, int) or (
        isinstance(pool, Sequence) and len(pool) == 3 and all(isinstance(p, int) for p in pool)
    ):
        return [as_triple(pool, "pool")] * (depth - 1)
    if not isinstance(pool, Sequence) or len(pool) != depth - 1:
        raise UsageError(
            f"pool must be one (x, y, z) factor or a list of depth - 1 = {depth - 1} of them, "
            f"got {pool!r}"
        )
    return [as_triple(p, f"pool[{i}]") for i, p in enumerate(pool)]


class UNet3d(nn.Module):
    """3D U-Net: (B, in_channels, x, y, z) float -> logits (B, out_channels, x, y, z).

    Parameters
    ----------
    in_channels, out_channels : input image channels; classes K (background included).
    depth : resolution levels (``depth - 1`` downsamplings), >= 2. Default 5.
    width : feature channels at full resolution, doubled at each level up to ``max_width``.
    max_width : cap on the channels of the deep levels (320 as in nnU-Net).
    norm : ``instance`` (default), ``batch`` or ``group``.
    act : ``leakyrelu`` (default), ``relu`` or ``gelu``.
    upsample : ``transposed`` (default), ``trilinear``, ``nearest`` or ``unpool``.
    downsample : ``conv`` (strided 3x3x3 conv) or ``maxpool``; default ``conv``, and
        ``maxpool`` when ``upsample='unpool'`` (which needs the pooling indices).
    pool : pooling factor per step, one (x, y, z) triple for all steps or a list
        of ``depth - 1`` triples, e.g. ``[(2, 2, 1), (2, 2, 2), ...]`` for thick-slice CT.
    convs_per_stage : ConvNormAct layers per level and decoder stage.
    kernel : convolution kernel (x, y, z) voxels of every block, one int or a triple, odd;
        default 3. A 1 along an axis that is never pooled makes the network work on each
        slice across that axis alone (``(3, 3, 1)``: a 2D U-Net per z-slice).
    deep_supervision : in training mode return ``[full-res logits, aux logits at
        1/2, 1/4, ... resolution]`` (``ds_levels`` aux outputs, each cropped to
        ceil(size / factor)); in eval mode always the full-resolution tensor.

    Any input size is accepted: zero-padding at the end of each axis to a
    multiple of the product of the pooling factors, then the output is cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 5,
        width: int = 32,
        max_width: int = 320,
        norm: str = "instance",
        act: str = "leakyrelu",
        upsample: str = "transposed",
        downsample: str | None = None,
        pool: Any = 2,
        convs_per_stage: int = 2,
        deep_supervision: bool = False,
        ds_levels: int = 2,
        kernel: Any = 3,
    ) -> None:
        super().__init__()
        check_positive_int(depth, "depth", 2)
        kernel = as_triple(kernel, "kernel")
        if any(k % 2 == 0 for k in kernel):
            raise UsageError(f"kernel must be odd on every axis (same padding), got {kernel!r}")
        style = network_style(
            norm, act, in_channels=in_channels, out_channels=out_channels, width=width,
            max_width=max_width, convs_per_stage=convs_per_stage, ds_levels=ds_levels,
        )
        check_option(upsample, UPSAMPLE_MODES, "upsample")
        if downsample is None:
            downsample = "maxpool" if upsample == "unpool" else "conv"
        check_option(downsample, DOWNSAMPLE_MODES, "downsample")
        if upsample == "unpool" and downsample != "maxpool":
            raise UsageError(
                f"upsample='unpool' needs downsample='maxpool' (its indices), got {downsample!r}"
            )
        pools = _resolve_pool(pool, depth)
        ds_levels = min(ds_levels, depth - 2) if deep_supervision else ds_levels
        self.pools = pools
        # cumulative pooling factor of each level, per axis: level 0 is (1, 1, 1)
        self.factors = [
            tuple(math.prod(p[a] for p in pools[:level]) for a in range(3))
            for level in range(depth)
        ]
        self.multiple = self.factors[-1]
        self.deep_supervision = bool(deep_supervision)
        self.ds_levels = ds_levels
        channels = [min(width * 2**level, max_width) for level in range(depth)]
        self.channels = channels

        self.encoder = nn.ModuleList()
        self.pooling = nn.ModuleList()
        for level, ch in enumerate(channels):
            layers = []
            ch_in = in_channels if level == 0 else channels[level - 1]
            if level > 0 and downsample == "conv":
                layers.append(ConvNormAct(ch_in, ch, style, kernel, pools[level - 1]))
            else:
                layers.append(ConvNormAct(ch_in, ch, style, kernel))
            if level > 0 and downsample == "maxpool":
                pool_layer = nn.MaxPool3d(pools[level - 1], pools[level - 1], return_indices=True)
                self.pooling.append(pool_layer)
            layers += [ConvNormAct(ch, ch, style, kernel) for _ in range(convs_per_stage - 1)]
            self.encoder.append(nn.Sequential(*layers))

        self.upsamplers = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            ch = channels[level]
            self.upsamplers.append(UpSample(channels[level + 1], ch, pools[level], upsample))
            layers = [ConvNormAct(2 * ch, ch, style, kernel)]
            layers += [ConvNormAct(ch, ch, style, kernel) for _ in range(convs_per_stage - 1)]
            self.decoder.append(nn.Sequential(*layers))
        self.head = nn.Conv3d(channels[0], out_channels, 1)
        self.aux_heads = nn.ModuleList(
            nn.Conv3d(channels[level], out_channels, 1)
            for level in range(1, ds_levels + 1)
        ) if self.deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C, x, y, z) -> logits (B, K, x, y, z); a list with deep supervision in training."""
        size = tuple(x.shape[2:])
        pad = [(-s) % m for s, m in zip(size, self.multiple)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        skips: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        for level, stage in enumerate(self.encoder):
            if level > 0 and len(self.pooling) > 0:
                x, idx = self.pooling[level - 1](x)
                indices.append(idx)
            x = stage(x)
            skips.append(x)
        outputs_by_level: dict[int, torch.Tensor] = {}
        x = skips[-1]
        for step, (up, stage) in enumerate(zip(self.upsamplers, self.decoder)):
            level = len(skips) - 2 - step
            skip = skips[level]
            idx = indices[level] if indices else None
            x = stage(torch.cat([up(x, skip.shape[2:], idx), skip], dim=1))
            outputs_by_level[level] = x
        logits = self.head(x)[:, :, : size[0], : size[1], : size[2]]
        if not (self.deep_supervision and self.training):
            return logits
        outputs = [logits]
        for i, head in enumerate(self.aux_heads):
            level = i + 1
            factor = self.factors[level]
            crop = [-(-s // f) for s, f in zip(size, factor)]
            outputs.append(head(outputs_by_level[level])[:, :, : crop[0], : crop[1], : crop[2]])
        return outputs
