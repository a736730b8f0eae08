"""nnU-Net's intensity augmentations as plain functions of one image channel, on its device.

Each function takes its random parameters explicitly (drawn by
:class:`medseg.data.augment.Augmenter`), so each is checkable by hand:

- :func:`gaussian_noise`: ``x + N(0, std^2)`` per voxel;
- :func:`gaussian_blur`: separable Gaussian with one sigma per axis (voxels), as
  ``scipy.ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=4)``;
- :func:`contrast`: ``mean + factor * (x - mean)``, clipped to the channel's range;
- :func:`low_resolution`: nearest-neighbour down to ``scale`` of the shape, trilinear back;
- :func:`gamma`: ``x -> x^g`` on the range scaled to [0, 1], mean and std kept; with
  ``invert``, ``1 - (1 - x)^g``.

Brightness is ``x * factor`` (no function needed). They follow batchgeneratorsv2's
transforms used by nnU-Net v2's ``nnUNetTrainer.get_training_transforms``; where they
differ it is said in the function. Channels are (x, y, z) tensors of a float dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["contrast", "draw_factor", "gamma", "gaussian_blur", "gaussian_noise",
           "low_resolution"]

EPS = 1e-7
"""Smallest range or standard deviation divided by (nnU-Net's)."""
TRUNCATE = 4.0
"""Gaussian kernel radius in sigmas (scipy's default; batchgeneratorsv2 uses 3)."""


def draw_factor(rng: np.random.Generator, low: float, high: float) -> float:
    """A factor from [low, high] drawn as nnU-Net's ``BGContrast``: when the range straddles
    1, below 1 or above 1 with probability 1/2 each (uniform on that side), so shrinking and
    stretching are equally likely; otherwise uniform on [low, high]."""
    if low < 1.0 < high:
        return float(rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high))
    return float(rng.uniform(low, high))


def gaussian_noise(image: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``image`` (any shape) plus independent zero-mean Gaussian noise of ``std``
    (intensity units) per voxel, drawn from ``generator`` (on ``image``'s device)."""
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return image + noise * std


def _kernel(sigma: float, size: int, like: torch.Tensor) -> torch.Tensor:
    """scipy's 1D Gaussian kernel (radius ``int(TRUNCATE * sigma + 0.5)``, at most
    ``size - 1`` voxels, as the mirrored padding allows)."""
    radius = min(int(TRUNCATE * sigma + 0.5), size - 1)
    x = torch.arange(-radius, radius + 1, device=like.device, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return (weights / weights.sum()).to(like.dtype)


def gaussian_blur(channel: torch.Tensor, sigma_vox: Sequence[float]) -> torch.Tensor:
    """``channel`` (x, y, z) smoothed by a Gaussian of ``sigma_vox`` (x, y, z; voxels).

    One 1D convolution per axis with mirrored borders (``d c b | a b c d | c b a``): equal to
    ``scipy.ndimage.gaussian_filter(channel, sigma_vox, mode="mirror")`` while the kernel
    radius (4 sigma) is shorter than the axis; on shorter axes the kernel is cut to the axis.
    A sigma of 0 leaves its axis alone.
    """
    out = channel[None, None]
    for axis, sigma in enumerate(sigma_vox):
        size = channel.shape[axis]
        if sigma <= 0 or size < 2:
            continue
        weights = _kernel(float(sigma), size, channel)
        radius = (weights.numel() - 1) // 2
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = weights.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis):2 * (2 - axis) + 2] = [radius, radius]
        out = F.conv3d(F.pad(out, pad, mode="reflect"), weights.view(shape))
    return out[0, 0]


def contrast(channel: torch.Tensor, factor: float) -> torch.Tensor:
    """``mean + factor * (channel - mean)``, clipped to the channel's [min, max]
    (nnU-Net's ``ContrastTransform`` with ``preserve_range``); a factor <= 1 keeps the mean."""
    mean = channel.mean()
    low, high = torch.aminmax(channel)
    return ((channel - mean) * factor + mean).clamp(low, high)


def low_resolution(channel: torch.Tensor, scale: float) -> torch.Tensor:
    """``channel`` (x, y, z) at a coarser resolution: resampled by nearest neighbour to
    ``round(n * scale)`` voxels per axis, then back to its shape by trilinear interpolation
    (nnU-Net's ``SimulateLowResolutionTransform``, one scale for every axis)."""
    shape = tuple(channel.shape)
    small = [max(1, round(n * scale)) for n in shape]
    if list(shape) == small:
        return channel
    coarse = F.interpolate(channel[None, None], size=small, mode="nearest-exact")
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]


def gamma(channel: torch.Tensor, value: float, invert: bool = False) -> torch.Tensor:
    """Gamma ``value`` on the channel's range, keeping its mean and standard deviation.

    ``y = ((x - min) / (max - min))^value * (max - min) + min``, then rescaled to the mean and
    std of ``x`` (nnU-Net's ``GammaTransform`` with ``p_retain_stats=1``). ``invert``: the
    same on ``-x``, negated back, i.e. ``1 - (1 - x)^value`` for ``x`` spanning [0, 1].
    """
    x = -channel if invert else channel
    mean, std = x.mean(), x.std()
    low, high = torch.aminmax(x)
    span = high - low
    y = ((x - low) / span.clamp(min=EPS)) ** value * span + low
    y = (y - y.mean()) * (std / y.std().clamp(min=EPS)) + mean
    return -y if invert else y
