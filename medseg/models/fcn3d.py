"""``fcn3d``: the fully convolutional network baseline (FCN-32s / 16s / 8s) in 3D.

Accepts any input size: the input is zero-padded at the end of each axis to a
multiple of 32 and the logits are cropped back, so (B, C, x, y, z) gives
(B, K, x, y, z).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import check_option
from medseg.models.blocks import ConvNormAct, network_style, stage_channels

__all__ = ["FCN3d", "VARIANTS", "FCN_UPSAMPLE_MODES"]

log = logging.getLogger(__name__)
VARIANTS = ("32s", "16s", "8s")
FCN_UPSAMPLE_MODES = ("transposed", "trilinear", "nearest")
_STRIDE = 32


def bilinear_kernel(channels: int, size: int = 4) -> torch.Tensor:
    """(C, C, s, s, s) trilinear weights for a stride-s/2 transposed conv (the FCN init)."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float64) - centre).abs() / factor
    kernel = ramp[:, None, None] * ramp[None, :, None] * ramp[None, None, :]
    weight = torch.zeros(channels, channels, size, size, size, dtype=torch.float64)
    for c in range(channels):
        weight[c, c] = kernel
    return weight.float()


class _Up2(nn.Module):
    """Upsample score maps (B, K, x, y, z) -> (B, K, 2x, 2y, 2z)."""

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "transposed":  # learned, initialised to trilinear interpolation (as FCN)
            self.conv = nn.ConvTranspose3d(channels, channels, 4, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(bilinear_kernel(channels, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            return self.conv(x)
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)


class FCN3d(nn.Module):
    """FCN in 3D: (B, C, x, y, z) -> logits (B, K, x, y, z).

    A VGG-like encoder of five stages (``convs_per_stage`` ConvNormAct, then 2x
    max pooling; channels ``width`` x (1, 2, 4, 8, 8)), "fc6/fc7" as 3x3x3 and
    1x1x1 convs without normalisation (``16 * width`` channels) and a 1x1x1
    scoring layer at stride 32.

    * ``32s``: the stride-32 scores are upsampled to the input size;
    * ``16s``: they are first upsampled 2x and added to scores of the stride-16
      pooling output;
    * ``8s`` (default): once more, adding the stride-8 scores.

    The 2x fusion upsamplings are ``upsample``: ``transposed`` (learned, initialised
    to trilinear, the FCN recipe), ``trilinear`` or ``nearest``; the final upsampling
    to the input size is fixed trilinear interpolation, as in FCN.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        variant: str = "8s",
        width: int = 16,
        convs_per_stage: int = 2,
        upsample: str = "transposed",
        norm: str = "instance",
        act: str = "relu",
    ) -> None:
        super().__init__()
        style = network_style(
            norm, act, in_channels=in_channels, out_channels=out_channels, width=width,
            convs_per_stage=convs_per_stage,
        )
        check_option(variant, VARIANTS, "variant")
        check_option(upsample, FCN_UPSAMPLE_MODES, "upsample")
        self.variant = variant
        chans = stage_channels(width)
        self.stages = nn.ModuleList()
        ch_in = in_channels
        for ch in chans:
            layers = [ConvNormAct(ch_in, ch, style)]
            layers += [ConvNormAct(ch, ch, style) for _ in range(convs_per_stage - 1)]
            layers.append(nn.MaxPool3d(2, 2))
            self.stages.append(nn.Sequential(*layers))
            ch_in = ch
        # No normalisation here: at stride 32 a patch may be a single voxel (as in FCN).
        self.fc = nn.Sequential(
            nn.Conv3d(chans[-1], 16 * width, 3, padding=1),
            style.act_layer(),
            nn.Conv3d(16 * width, 16 * width, 1),
            style.act_layer(),
        )
        self.score_fr = nn.Conv3d(16 * width, out_channels, 1)
        self.score_pool4 = nn.Conv3d(chans[3], out_channels, 1) if variant != "32s" else None
        self.score_pool3 = nn.Conv3d(chans[2], out_channels, 1) if variant == "8s" else None
        self.up_pool4 = _Up2(out_channels, upsample) if variant != "32s" else None
        self.up_pool3 = _Up2(out_channels, upsample) if variant == "8s" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, x, y, z) -> logits (B, K, x, y, z)."""
        size = tuple(x.shape[2:])
        pad = [(-s) % _STRIDE for s in size]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        padded = x.shape[2:]
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x)  # strides 2, 4, 8, 16, 32
        score = self.score_fr(self.fc(x))
        if self.up_pool4 is not None and self.score_pool4 is not None:
            score = self.up_pool4(score) + self.score_pool4(pooled[3])
        if self.up_pool3 is not None and self.score_pool3 is not None:
            score = self.up_pool3(score) + self.score_pool3(pooled[2])
        score = F.interpolate(score, size=padded, mode="trilinear", align_corners=False)
        return score[:, :, : size[0], : size[1], : size[2]]
