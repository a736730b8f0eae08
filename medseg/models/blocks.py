"""Building blocks shared by the 3D networks.

All blocks take and return tensors shaped (B, C, x, y, z). Kernel sizes,
strides, dilations and scale factors are in voxels, either one int for all
three axes or an (x, y, z) triple.

* :class:`LayerStyle` -- normalisation, activation and separable convolutions: the one
  value a network passes to all of its blocks (:func:`network_style` checks and builds it);
* :class:`ConvNormAct` -- convolution -> normalisation -> activation;
* :class:`SeparableConv3d` -- depthwise (one filter per channel) then pointwise 1x1x1;
* :class:`ResidualBlock` -- two convolutions with an identity (or projected) shortcut,
  optionally dilated;
* :class:`ASPP3d` -- atrous spatial pyramid pooling (DeepLab) in 3D;
* :class:`UpSample` -- ``nearest``, ``trilinear``, ``transposed`` (learned up-convolution)
  or ``unpool`` (max-unpooling with the encoder's pooling indices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import UsageError, check_option

__all__ = [
    "NORMS",
    "ACTIVATIONS",
    "UPSAMPLE_MODES",
    "Triple",
    "as_triple",
    "check_positive_int",
    "LayerStyle",
    "network_style",
    "stage_channels",
    "make_norm",
    "make_act",
    "ConvNormAct",
    "SeparableConv3d",
    "ResidualBlock",
    "ASPP3d",
    "UpSample",
    "max_unpool",
]

NORMS = ("instance", "batch", "group")
ACTIVATIONS = ("relu", "leakyrelu", "gelu")
UPSAMPLE_MODES = ("nearest", "trilinear", "transposed", "unpool")

Triple = tuple[int, int, int]
IntOrTriple = Union[int, Sequence[int]]


def as_triple(value: IntOrTriple, name: str, minimum: int = 1) -> Triple:
    """Return ``value`` as an (x, y, z) triple of ints >= ``minimum``, else raise UsageError."""
    if isinstance(value, bool):
        raise UsageError(f"{name} must be an int or three ints >= {minimum}, got {value!r}")
    if isinstance(value, int):
        triple = (value, value, value)
    else:
        try:
            triple = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise UsageError(
                f"{name} must be an int or three ints >= {minimum}, got {value!r}"
            ) from None
    if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) for v in triple):
        raise UsageError(f"{name} must be an int or three ints >= {minimum}, got {value!r}")
    if min(triple) < minimum:
        raise UsageError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    return triple  # type: ignore[return-value]


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``; raise UsageError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerStyle:
    """How a network builds its convolution blocks: one value, shared by every block.

    Parameters
    ----------
    norm : one of :data:`NORMS` (see :func:`make_norm`).
    act : one of :data:`ACTIVATIONS` (see :func:`make_act`).
    separable : depthwise-separable convolutions (:class:`SeparableConv3d`) for every
        kernel larger than 1x1x1.

    Raises
    ------
    UsageError
        ``norm`` or ``act`` is not a known option (the message names the closest).
    """

    norm: str = "instance"
    act: str = "leakyrelu"
    separable: bool = False

    def __post_init__(self) -> None:
        check_option(self.norm, NORMS, "norm")
        check_option(self.act, ACTIVATIONS, "act")

    def conv(
        self, in_channels: int, out_channels: int, kernel_size: IntOrTriple = 3,
        stride: IntOrTriple = 1, dilation: IntOrTriple = 1,
    ) -> nn.Module:
        """A "same"-padded bias-free 3D convolution, separable if the style says so.

        Kernel size, stride and dilation in voxels (one int or an (x, y, z) triple);
        1x1x1 kernels are never split.
        """
        kernel = as_triple(kernel_size, "kernel_size")
        if self.separable and kernel != (1, 1, 1):
            return SeparableConv3d(in_channels, out_channels, kernel, stride, dilation)
        return _same_conv(in_channels, out_channels, kernel, stride, dilation)

    def norm_layer(self, channels: int) -> nn.Module:
        """The normalisation layer for ``channels`` feature maps."""
        return make_norm(self.norm, channels)

    def act_layer(self) -> nn.Module:
        """The activation layer."""
        return make_act(self.act)


def network_style(norm: str, act: str, separable: bool = False, **counts: object) -> LayerStyle:
    """Check the arguments every network constructor shares, in order; return their LayerStyle.

    Parameters
    ----------
    norm, act, separable : as in :class:`LayerStyle`.
    **counts : channel, width and layer counts by parameter name, each an int >= 1
        (checked before ``norm`` and ``act``, in the order given).

    Raises
    ------
    UsageError
        On the first bad argument, naming it.
    """
    for name, value in counts.items():
        check_positive_int(value, name)
    return LayerStyle(norm, act, bool(separable))


def stage_channels(width: int) -> tuple[int, int, int, int, int]:
    """Channels of the five encoder stages of DeepLab3d and FCN3d: ``width`` x (1, 2, 4, 8, 8)."""
    return (width, 2 * width, 4 * width, 8 * width, 8 * width)


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer for ``channels`` feature maps.

    ``instance`` (affine InstanceNorm3d), ``batch`` (BatchNorm3d) or ``group``
    (GroupNorm with up to 8 groups, the largest count dividing ``channels``).
    """
    check_option(norm, NORMS, "norm")
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


def make_act(act: str) -> nn.Module:
    """Activation: ``relu``, ``leakyrelu`` (slope 0.01) or ``gelu``."""
    check_option(act, ACTIVATIONS, "act")
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=True)
    return nn.GELU()


def _padding(kernel: Triple, dilation: Triple) -> Triple:
    return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))  # type: ignore[return-value]


class SeparableConv3d(nn.Module):
    """Depthwise-separable 3D convolution: depthwise ``kernel`` conv, then pointwise 1x1x1.

    Input (B, C_in, x, y, z) -> (B, C_out, x', y', z') with x' = ceil(x / stride)
    for odd kernels ("same" padding scaled by the dilation). No bias (a norm follows).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: IntOrTriple = 3,
        stride: IntOrTriple = 1, dilation: IntOrTriple = 1,
    ) -> None:
        super().__init__()
        kernel = as_triple(kernel_size, "kernel_size")
        self.depthwise = _same_conv(
            in_channels, in_channels, kernel, stride, dilation, groups=in_channels
        )
        self.pointwise = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _same_conv(
    in_channels: int, out_channels: int, kernel: Triple, stride: IntOrTriple,
    dilation: IntOrTriple, groups: int = 1,
) -> nn.Conv3d:
    """A bias-free 3D convolution with "same" padding (scaled by the dilation)."""
    dil = as_triple(dilation, "dilation")
    return nn.Conv3d(
        in_channels, out_channels, kernel, as_triple(stride, "stride"),
        _padding(kernel, dil), dil, groups=groups, bias=False,
    )


class ConvNormAct(nn.Sequential):
    """Convolution -> normalisation -> activation, as ``style`` says (the conv has no bias).

    ``activate=False`` leaves the activation out (for the last conv of a residual block).
    Input (B, C_in, x, y, z) -> (B, C_out, ceil(x / stride), ...); kernel size, stride
    and dilation in voxels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, style: LayerStyle,
        kernel_size: IntOrTriple = 3, stride: IntOrTriple = 1, dilation: IntOrTriple = 1,
        activate: bool = True,
    ) -> None:
        layers = [
            style.conv(in_channels, out_channels, kernel_size, stride, dilation),
            style.norm_layer(out_channels),
        ]
        if activate:
            layers.append(style.act_layer())
        super().__init__(*layers)

    @property
    def conv(self) -> nn.Module:
        """The convolution (plain Conv3d or SeparableConv3d)."""
        return self[0]


class ResidualBlock(nn.Module):
    """Two 3x3x3 convolutions (the first strided and both dilated) plus a shortcut.

    out = act(norm(conv(act(norm(conv(x))))) + shortcut(x)); the shortcut is the
    identity, or a strided 1x1x1 conv + norm when the shape changes.
    Input (B, C_in, x, y, z) -> (B, C_out, ceil(x / stride), ...).
    """

    def __init__(
        self, in_channels: int, out_channels: int, style: LayerStyle, stride: IntOrTriple = 1,
        dilation: IntOrTriple = 1,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, style, 3, stride, dilation)
        self.conv2 = ConvNormAct(out_channels, out_channels, style, 3, 1, dilation, activate=False)
        if in_channels == out_channels and as_triple(stride, "stride") == (1, 1, 1):
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvNormAct(in_channels, out_channels, style, 1, stride, activate=False)
        self.act = style.act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class _PoolingBranch(nn.Module):
    """Global average pooling -> 1x1x1 conv -> activation, broadcast back to the input size.

    No normalisation: a single voxel per channel has no spatial statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, style: LayerStyle) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1, bias=True)
        self.act = style.act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(F.adaptive_avg_pool3d(x, 1)))
        return pooled.expand(-1, -1, x.shape[2], x.shape[3], x.shape[4])


class ASPP3d(nn.Module):
    """Atrous spatial pyramid pooling in 3D (DeepLab v3).

    Five parallel branches on the same input -- a 1x1x1 conv, three 3x3x3 convs
    dilated by ``rates`` (voxels; a branch with rate r sees a (2r + 1)^3 window)
    and a global-average-pooling branch -- are concatenated and projected by a
    1x1x1 conv to ``out_channels``; ``style.separable`` makes the dilated branches
    depthwise-separable. ``dropout`` is the Dropout3d probability after the projection.
    Input (B, C_in, x, y, z) -> (B, out_channels, x, y, z).
    """

    def __init__(
        self, in_channels: int, out_channels: int, style: LayerStyle,
        rates: Sequence[int] = (2, 4, 6), dropout: float = 0.0,
    ) -> None:
        super().__init__()
        rates = tuple(rates)
        if len(rates) != 3 or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rates
        ):
            raise UsageError(f"ASPP rates must be three ints >= 1, got {rates!r}")
        branches = [ConvNormAct(in_channels, out_channels, style, 1)]
        branches += [ConvNormAct(in_channels, out_channels, style, 3, 1, r) for r in rates]
        self.branches = nn.ModuleList(branches)
        self.pooling = _PoolingBranch(in_channels, out_channels, style)
        self.project = ConvNormAct(5 * out_channels, out_channels, style, 1)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.dropout(self.project(torch.cat(features, dim=1)))


def max_unpool(x: torch.Tensor, indices: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Max-unpooling: (B, C, x', y', z') values to (B, C, *size) at the flat ``indices``.

    ``indices`` are those of ``max_pool3d(..., return_indices=True)``: per (b, c), the
    position of each maximum in the flattened (x, y, z) input of the pooling. Every
    other voxel is zero. Written with ``scatter`` (not ``F.max_unpool3d``) so that
    it traces to TorchScript and exports to ONNX.
    """
    b, c = x.shape[0], x.shape[1]
    out = x.new_zeros(b, c, int(size[0]) * int(size[1]) * int(size[2]))
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(b, c, int(size[0]), int(size[1]), int(size[2]))


class UpSample(nn.Module):
    """Upsample (B, C_in, x, y, z) by ``scale`` to (B, C_out, x * sx, y * sy, z * sz).

    Modes:

    * ``nearest`` / ``trilinear`` -- 1x1x1 conv to C_out, then interpolation to the
      requested size;
    * ``transposed`` -- learned up-convolution, kernel = stride = ``scale``;
    * ``unpool`` -- 1x1x1 conv to C_out, then max-unpooling: each value returns to
      the position its encoder max-pooling took it from (``indices`` from
      ``nn.MaxPool3d(return_indices=True)`` on a C_out-channel feature map);
      every other voxel is zero.

    ``forward(x, size, indices)``: ``size`` is the output spatial size (x, y, z).
    """

    def __init__(self, in_channels: int, out_channels: int, scale: IntOrTriple, mode: str) -> None:
        super().__init__()
        self.mode = check_option(mode, UPSAMPLE_MODES, "upsample")
        self.scale = as_triple(scale, "scale")
        if mode == "transposed":
            self.conv: nn.Module = nn.ConvTranspose3d(
                in_channels, out_channels, self.scale, self.scale, bias=False
            )
        elif in_channels != out_channels:
            self.conv = nn.Conv3d(in_channels, out_channels, 1, bias=False)
        else:
            self.conv = nn.Identity()

    def forward(
        self, x: torch.Tensor, size: Sequence[int], indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.conv(x)
        if self.mode == "transposed":
            return x
        if self.mode == "unpool":
            if indices is None:
                raise UsageError("upsample 'unpool' needs the encoder's max-pooling indices")
            return max_unpool(x, indices, size)
        if self.mode == "nearest":
            return F.interpolate(x, size=list(size), mode="nearest")
        return F.interpolate(x, size=list(size), mode="trilinear", align_corners=False)
