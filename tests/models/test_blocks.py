"""Blocks: separable conv, ASPP receptive extents, unpooling with the encoder's indices."""

import pytest
import torch
import torch.nn.functional as F

from medseg.errors import UsageError
from medseg.models.blocks import (
    ASPP3d,
    ConvNormAct,
    LayerStyle,
    ResidualBlock,
    SeparableConv3d,
    UpSample,
    network_style,
)


def test_separable_is_depthwise_then_pointwise():
    torch.manual_seed(0)
    conv = SeparableConv3d(3, 5, 3, dilation=2)
    x = torch.randn(2, 3, 9, 8, 7)
    dw = F.conv3d(x, conv.depthwise.weight, padding=2, dilation=2, groups=3)
    ref = F.conv3d(dw, conv.pointwise.weight)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    assert sum(p.numel() for p in conv.parameters()) == 3 * 27 + 3 * 5


@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
@pytest.mark.parametrize("act", ["relu", "leakyrelu", "gelu"])
def test_conv_norm_act_shapes(norm, act):
    block = ConvNormAct(2, 8, LayerStyle(norm, act), 3, stride=(2, 2, 1))
    assert block(torch.randn(2, 2, 9, 8, 5)).shape == (2, 8, 5, 4, 5)


def test_residual_block_with_dilation_keeps_size_and_projects():
    block = ResidualBlock(4, 8, LayerStyle(), stride=2, dilation=2)
    assert block(torch.randn(1, 4, 11, 10, 9)).shape == (1, 8, 6, 5, 5)
    identity = ResidualBlock(4, 4, LayerStyle(), dilation=3)
    assert isinstance(identity.shortcut, torch.nn.Identity)


@pytest.mark.parametrize("separable", [False, True])
def test_aspp_branch_impulse_extent_matches_rate(separable):
    rates = (1, 3, 5)
    aspp = ASPP3d(2, 4, LayerStyle(act="relu", separable=separable), rates)
    x = torch.zeros(1, 2, 21, 21, 21)
    x[0, :, 10, 10, 10] = 1.0
    with torch.no_grad():
        for branch, rate in zip(aspp.branches[1:], rates):
            out = branch.conv(x)[0].abs().sum(0)  # the dilated convolution of the branch
            nonzero = torch.nonzero(out > 0)
            extent = (nonzero.max(0).values - nonzero.min(0).values + 1).tolist()
            assert extent == [2 * rate + 1] * 3
            # the taps are r voxels apart: (3 per axis)^3 = 27 responding voxels
            assert len(nonzero) == 27
        assert aspp.branches[0].conv.kernel_size == (1, 1, 1)
        assert aspp(torch.randn(1, 2, 7, 6, 5)).shape == (1, 4, 7, 6, 5)


def test_aspp_rejects_bad_rates():
    with pytest.raises(UsageError, match="rates"):
        ASPP3d(2, 4, LayerStyle(), (2, 4))


def test_unpool_puts_values_back_at_pooling_indices():
    torch.manual_seed(0)
    skip = torch.randn(1, 3, 6, 4, 4)
    pooled, idx = torch.nn.MaxPool3d(2, 2, return_indices=True)(skip)
    up = UpSample(3, 3, 2, "unpool")
    out = up(pooled, skip.shape[2:], idx)
    # every 2x2x2 block holds exactly one non-zero: its maximum, where the maximum was
    blocks = skip.reshape(1, 3, 3, 2, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(1, 3, 3, 2, 2, 8)
    is_max = blocks == blocks.max(-1, keepdim=True).values
    expected = torch.where(is_max, blocks, torch.zeros_like(blocks))
    expected = expected.reshape(1, 3, 3, 2, 2, 2, 2, 2).permute(0, 1, 2, 5, 3, 6, 4, 7).reshape(1, 3, 6, 4, 4)
    assert torch.equal(out, expected)
    nearest = UpSample(3, 3, 2, "nearest")(pooled, skip.shape[2:])
    assert not torch.equal(nearest, expected)  # plain nearest upsampling fails this test


@pytest.mark.parametrize("mode", ["nearest", "trilinear", "transposed"])
def test_upsample_modes_scale_and_channels(mode):
    up = UpSample(8, 4, (2, 2, 1), mode)
    assert up(torch.randn(1, 8, 3, 4, 5), (6, 8, 5)).shape == (1, 4, 6, 8, 5)


def test_bad_options_name_the_parameter():
    with pytest.raises(UsageError, match="did you mean 'instance'"):
        LayerStyle(norm="instanc")
    with pytest.raises(UsageError, match="did you mean 'leakyrelu'"):
        LayerStyle(act="leaky_relu")
    with pytest.raises(UsageError, match="did you mean 'trilinear'"):
        UpSample(2, 2, 2, "trilinar")
    with pytest.raises(UsageError, match="stride"):
        ConvNormAct(1, 2, LayerStyle(), stride=(2, 2))


def test_max_unpool_equals_torch():
    torch.manual_seed(1)
    skip = torch.randn(2, 3, 8, 6, 4)
    pooled, idx = F.max_pool3d(skip, (2, 2, 1), (2, 2, 1), return_indices=True)
    ref = F.max_unpool3d(pooled, idx, (2, 2, 1), (2, 2, 1), output_size=skip.shape[2:])
    assert torch.equal(UpSample(3, 3, (2, 2, 1), "unpool")(pooled, skip.shape[2:], idx), ref)


def test_layer_style_decides_every_layer_of_a_block():
    plain = ResidualBlock(4, 8, LayerStyle("batch", "gelu"), stride=2)
    assert [type(m).__name__ for m in plain.conv1] == ["Conv3d", "BatchNorm3d", "GELU"]
    assert [type(m).__name__ for m in plain.conv2] == ["Conv3d", "BatchNorm3d"]  # no activation
    assert type(plain.act).__name__ == "GELU"
    separable = ResidualBlock(4, 8, LayerStyle("group", "relu", separable=True), stride=2)
    assert isinstance(separable.conv1.conv, SeparableConv3d)
    assert isinstance(separable.shortcut.conv, torch.nn.Conv3d)  # 1x1x1 kernels are never split
    assert separable.conv1[1].num_groups == 8  # gcd(8, 8 channels)
    # 4 -> 8 channels: depthwise 4 * 27 + pointwise 4 * 8 weights
    assert sum(p.numel() for p in separable.conv1.conv.parameters()) == 4 * 27 + 4 * 8


def test_network_style_checks_counts_before_options():
    with pytest.raises(UsageError, match="width must be an int >= 1, got 0"):
        network_style("instanc", "relu", width=0)
    with pytest.raises(UsageError, match="did you mean 'instance'"):
        network_style("instanc", "relu", width=4)
    assert network_style("batch", "gelu", True, width=4) == LayerStyle("batch", "gelu", True)
