"""``deeplab3d``: DeepLab v3 / v3+ in 3D (residual encoder, dilation, ASPP, low-level decoder).

Accepts any input size: strided convolutions round up, and every upsampling
interpolates to the exact size of its target, so (B, C, x, y, z) gives
(B, K, x, y, z). Instance norm needs at least two voxels at the deepest level
in training, i.e. a patch larger than ``output_stride`` voxels on some axis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import UsageError
from medseg.models.blocks import (
    ASPP3d,
    ConvNormAct,
    LayerStyle,
    ResidualBlock,
    check_positive_int,
    network_style,
    stage_channels,
)

__all__ = ["DeepLab3d", "DEFAULT_RATES"]

log = logging.getLogger(__name__)
DEFAULT_RATES = {8: (2, 4, 6), 16: (1, 2, 3)}


def _stage(
    in_ch: int, out_ch: int, blocks: int, stride: int, dilation: int, style: LayerStyle
) -> nn.Sequential:
    layers = [ResidualBlock(in_ch, out_ch, style, stride, dilation)]
    layers += [ResidualBlock(out_ch, out_ch, style, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class DeepLab3d(nn.Module):
    """DeepLab v3+ (``decoder=True``) or v3 in 3D: (B, C, x, y, z) -> logits (B, K, x, y, z).

    Encoder: a full-resolution 3x3x3 stem, then five residual stages with
    nominal strides 2, 4, 8, 16, 32 and channels ``width`` x (1, 2, 4, 8, 8).
    With ``output_stride=16`` the last stage keeps the resolution and dilates by
    2; with ``output_stride=8`` the last two stages dilate by 2 and 4. ASPP
    (``rates`` in voxels at the output stride) follows; the v3+ decoder upsamples
    it to stride 4, fuses the 1x1x1-reduced stride-4 encoder feature, refines
    with two 3x3x3 convs, classifies and upsamples trilinearly to the input size.

    Parameters
    ----------
    width : channels of the stem (default 24).
    output_stride : 8 (default) or 16.
    rates : ASPP dilation rates; default (2, 4, 6) at OS 8 and (1, 2, 3) at OS 16.
    aspp_channels : ASPP and decoder channels (default ``4 * width``).
    low_level_channels : channels of the reduced low-level feature (default ``width``).
    blocks_per_stage : residual blocks per stage (default 2).
    separable : depthwise-separable 3x3x3 convs throughout (except the stem).
    decoder : True for v3+, False for plain v3 (classify at the output stride).
    norm, act : as in :class:`~medseg.models.blocks.LayerStyle` (default instance, relu).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 24,
        output_stride: Literal[8, 16] = 8,
        rates: Sequence[int] | None = None,
        aspp_channels: int | None = None,
        low_level_channels: int | None = None,
        blocks_per_stage: int = 2,
        separable: bool = False,
        decoder: bool = True,
        norm: str = "instance",
        act: str = "relu",
    ) -> None:
        super().__init__()
        style = network_style(
            norm, act, separable, in_channels=in_channels, out_channels=out_channels, width=width,
            blocks_per_stage=blocks_per_stage,
        )
        if output_stride not in DEFAULT_RATES:
            raise UsageError(f"output_stride must be 8 or 16, got {output_stride!r}")
        rates = tuple(DEFAULT_RATES[output_stride] if rates is None else rates)
        aspp_channels = check_positive_int(
            4 * width if aspp_channels is None else aspp_channels, "aspp_channels"
        )
        low_level_channels = check_positive_int(
            width if low_level_channels is None else low_level_channels, "low_level_channels"
        )
        strides = (2, 2, 2, 2, 1) if output_stride == 16 else (2, 2, 2, 1, 1)
        dilations = (1, 1, 1, 1, 2) if output_stride == 16 else (1, 1, 1, 2, 4)
        chans = stage_channels(width)
        self.stem = ConvNormAct(in_channels, width, replace(style, separable=False))
        self.stages = nn.ModuleList()
        ch_in = width
        for i, (ch, s, d) in enumerate(zip(chans, strides, dilations)):
            self.stages.append(_stage(ch_in, ch, 1 if i == 0 else blocks_per_stage, s, d, style))
            ch_in = ch
        self.aspp = ASPP3d(ch_in, aspp_channels, style, rates)
        self.use_decoder = bool(decoder)
        if self.use_decoder:
            self.reduce = ConvNormAct(chans[1], low_level_channels, style, 1)
            self.refine = nn.Sequential(
                ConvNormAct(aspp_channels + low_level_channels, aspp_channels, style),
                ConvNormAct(aspp_channels, aspp_channels, style),
            )
        self.classifier = nn.Conv3d(aspp_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, x, y, z) -> logits (B, K, x, y, z)."""
        size = x.shape[2:]
        x = self.stem(x)
        low_level = x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 1:
                low_level = x  # stride 4
        x = self.aspp(x)
        if self.use_decoder:
            low = self.reduce(low_level)
            x = F.interpolate(x, size=low.shape[2:], mode="trilinear", align_corners=False)
            x = self.refine(torch.cat([x, low], dim=1))
        x = self.classifier(x)
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)
