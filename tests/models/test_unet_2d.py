"""``unet3d`` with 3 x 3 x 1 kernels and no pooling along z is nnU-Net's 2D U-Net: the same
parameters and, with nnU-Net's weights copied in, the same logits as
``dynamic_network_architectures``' ``PlainConvUNet`` (``nn.Conv2d``, the network nnU-Net's
``2d`` configuration trains) on every slice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg import models
from medseg.errors import UsageError

unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")

WIDTHS = [8, 16, 32, 64]


def _nnunet_2d(in_channels: int, classes: int) -> nn.Module:
    """nnU-Net's 2D PlainConvUNet as its planner configures it (no conv bias, affine
    instance norm, leaky ReLU, two convolutions per stage), with one seg layer per decoder
    stage (deep supervision)."""
    return unet.PlainConvUNet(
        in_channels, len(WIDTHS), WIDTHS, nn.Conv2d, 3, [1, 2, 2, 2], 2, classes, 2, False,
        nn.InstanceNorm2d, {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU,
        {"inplace": True}, deep_supervision=True)


def _medseg_2d(in_channels: int, classes: int) -> nn.Module:
    return models.create("unet3d", in_channels=in_channels, out_channels=classes,
                         depth=len(WIDTHS), width=WIDTHS[0], pool=[[2, 2, 1]] * 3,
                         kernel=[3, 3, 1], deep_supervision=True, ds_levels=len(WIDTHS) - 2)


def _copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """nnU-Net's 2D weights into medseg's network, each 2D kernel given a z-extent of 1.
    nnU-Net's seg layers run from the coarsest decoder stage to full resolution; medseg's
    ``head`` is full resolution and ``aux_heads[i]`` level ``i + 1``."""
    levels = len(WIDTHS)

    def conv_block(stage, block):
        for i, layer in enumerate(stage.convs):
            block[i][0].weight.copy_(layer.conv.weight[..., None])
            block[i][1].weight.copy_(layer.norm.weight)
            block[i][1].bias.copy_(layer.norm.bias)

    for level in range(levels):
        conv_block(src.encoder.stages[level][0], dst.encoder[level])
    for j in range(levels - 1):
        conv_block(src.decoder.stages[j], dst.decoder[j])
        dst.upsamplers[j].conv.weight.copy_(src.decoder.transpconvs[j].weight[..., None])
    heads = [dst.head, *dst.aux_heads]  # full resolution first
    for j, seg in enumerate(src.decoder.seg_layers):
        head = heads[levels - 2 - j]
        head.weight.copy_(seg.weight[..., None])
        head.bias.copy_(seg.bias)


def test_same_parameters_as_nnunets_2d_unet():
    ours, theirs = _medseg_2d(2, 3), _nnunet_2d(2, 3)
    assert (sum(p.numel() for p in ours.parameters())
            == sum(p.numel() for p in theirs.parameters()))
    assert ours.encoder[0][0][0].weight.shape == (WIDTHS[0], 2, 3, 3, 1)


def test_logits_equal_nnunets_2d_unet_slice_by_slice():
    torch.manual_seed(0)
    theirs = _nnunet_2d(1, 3).eval()
    for p in theirs.parameters():  # away from the initialisation's zeros and ones
        p.data.normal_(0.0, 0.2)
    ours = _medseg_2d(1, 3).eval()
    with torch.no_grad():
        _copy_weights(theirs, ours)
        theirs.decoder.deep_supervision = False
        volume = torch.randn(1, 1, 40, 24, 3)  # (B, C, x, y, z): three slices
        for z in range(volume.shape[-1]):
            expected = theirs(volume[..., z])  # (B, K, x, y)
            got = ours(volume[..., z:z + 1])[..., 0]  # one slice: a 2D image
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_even_kernel_is_refused():
    with pytest.raises(UsageError, match="kernel must be odd"):
        models.create("unet3d", in_channels=1, out_channels=2, depth=2, kernel=[3, 2, 1])
