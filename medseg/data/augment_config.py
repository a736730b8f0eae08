"""The ``train.augment`` section of a pipeline YAML (:class:`AugmentConfig`) and its checks.

Kept apart from :mod:`medseg.data.augment` so that reading a config imports neither torch
nor MONAI. :mod:`medseg.config` re-exports :class:`AugmentConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import ConfigError

__all__ = ["AugmentConfig", "check_augment"]


def _span(low: float, high: float) -> Any:
    """A ``[low, high]`` range default (a new list per config)."""
    return field(default_factory=lambda: [low, high])


@dataclass
class AugmentConfig:
    """Random augmentation of training patches, in the order listed; each with a probability
    per patch (``*_prob``). Ranges are ``[low, high]``, drawn uniformly unless said.

    Spatial (image and label alike): ``flip_prob`` per axis; ``affine_prob``: a rotation
    of up to ``rotate_deg`` degrees about each axis and a zoom of up to ``scale`` (0.1 =
    +-10 %) per axis (MONAI ``RandAffine``; bilinear for the image, nearest for the label).

    Intensity (image only; nnU-Net v2's defaults unless said):

    - ``noise_prob`` 0.1, ``noise_std`` [0, 0.1]: Gaussian noise of that standard deviation
      (intensity units, normalised images), one std for all channels;
    - ``blur_prob`` 0.2, ``blur_sigma`` [0.5, 1] voxels: Gaussian blur, each channel with
      probability 1/2, one sigma per channel and axis;
    - ``brightness_prob`` 0.15, ``brightness_range`` [0.75, 1.25]: image times a factor
      per channel (below or above 1 with probability 1/2 each, nnU-Net's ``BGContrast``);
    - ``intensity_prob`` (medseg's, 0.15): multiply by 1 + U(-``intensity_scale``,
      ``intensity_scale``), then add U(-``intensity_shift``, ``intensity_shift``) (MONAI);
    - ``contrast_prob`` 0.15, ``contrast_range`` [0.75, 1.25]: ``mean + f * (x - mean)``
      clipped to the channel's range, f per channel drawn as the brightness factor;
    - ``lowres_prob`` 0.25, ``lowres_scale`` [0.5, 1]: each channel with probability 1/2
      resampled to that share of its voxels per axis (nearest) and back (trilinear);
    - ``inverted_gamma_prob`` 0.1, then ``gamma_prob`` (medseg's 0.15; nnU-Net 0.3), gamma
      from ``gamma_range`` [0.7, 1.5] (drawn as the brightness factor): ``x^g`` on the range
      scaled to [0, 1], mean and std kept; inverted: ``1 - (1 - x)^g``.

    ``enabled: false`` turns everything off. Probabilities are in [0, 1].
    """

    enabled: bool = True
    flip_prob: float = 0.5
    affine_prob: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.1
    noise_prob: float = 0.1
    noise_std: list[float] = _span(0.0, 0.1)
    blur_prob: float = 0.2
    blur_sigma: list[float] = _span(0.5, 1.0)  # voxels
    brightness_prob: float = 0.15
    brightness_range: list[float] = _span(0.75, 1.25)
    intensity_prob: float = 0.15  # medseg's, not nnU-Net's
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    contrast_prob: float = 0.15
    contrast_range: list[float] = _span(0.75, 1.25)
    lowres_prob: float = 0.25
    lowres_scale: list[float] = _span(0.5, 1.0)  # share of the voxels per axis
    inverted_gamma_prob: float = 0.1
    gamma_prob: float = 0.15  # medseg's default; nnU-Net 0.3
    gamma_range: list[float] = _span(0.7, 1.5)


_RANGES = {  # key -> (smallest low, largest high, inclusive low)
    "noise_std": (0.0, float("inf"), True),
    "blur_sigma": (0.0, float("inf"), True),
    "brightness_range": (0.0, float("inf"), False),
    "contrast_range": (0.0, float("inf"), True),
    "lowres_scale": (0.0, 1.0, False),
    "gamma_range": (0.0, float("inf"), False),
}


def check_augment(cfg: AugmentConfig, source: str | None = None) -> None:
    """Raise ConfigError naming ``source`` and the ``train.augment`` key of a probability
    outside [0, 1], a negative angle or zoom, or a range that is not ``[low, high]`` with
    ``low <= high`` inside its domain."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"train.augment.{f.name}"
        if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} = {value!r}: expected a probability in [0, 1]", source)
        if f.name in ("rotate_deg", "scale", "intensity_scale", "intensity_shift") and value < 0:
            raise ConfigError(f"{key} = {value!r}: expected a number >= 0", source)
        if f.name in _RANGES:
            _check_range(key, value, *_RANGES[f.name], source)


def _check_range(key: str, value: list[float], low: float, high: float, closed: bool,
                 source: str | None) -> None:
    ok = len(value) == 2 and value[0] <= value[1] and value[1] <= high and (
        value[0] >= low if closed else value[0] > low)
    if not ok:
        bound = f"{'>=' if closed else '>'} {low:g}" + (f", high <= {high:g}"
                                                        if high != float("inf") else "")
        raise ConfigError(f"{key} = {value!r}: expected [low, high] with low <= high, low "
                          f"{bound}", source)
