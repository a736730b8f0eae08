"""Random augmentation of training patches, seeded, on the batch's device.

Per patch, in this order (probabilities and ranges in
:class:`medseg.data.augment_config.AugmentConfig`, nnU-Net v2's recipe by default):
a flip along each spatial axis (MONAI ``RandFlip``) and a rotation + scaling (``RandAffine``;
bilinear for the image, nearest for the label, the same random parameters for both), then
on the image only: Gaussian noise, Gaussian blur, multiplicative brightness, medseg's
intensity scale and shift (``RandScaleIntensity``, ``RandShiftIntensity``), contrast,
simulated low resolution, inverted gamma and gamma (:mod:`medseg.data.intensity_augment`).
The label is touched by the flips and the affine only. The batch stays on its device, so
on a GPU the augmentation runs there.

Every call takes a ``seed``; patch ``b`` of the batch draws from ``seed * 1009 + b``
(MONAI random states, a NumPy generator for the parameters and a torch generator on the
device for the noise), so the same seed gives the same result on the same device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from medseg.data import intensity_augment as ia

__all__ = ["Augmenter"]

BLUR_CHANNEL_PROB = 0.5
"""nnU-Net: a blurred patch blurs each channel with this probability."""
LOWRES_CHANNEL_PROB = 0.5
"""nnU-Net: a low-resolution patch resamples each channel with this probability."""


class Augmenter:
    """Augment a batch: image (B, C, x, y, z) float, label (B, x, y, z) int.

    Parameters
    ----------
    config : a :class:`medseg.config.AugmentConfig` (probabilities, ranges).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        if not config.enabled:  # MONAI takes seconds to import: only when needed
            return
        from monai.transforms import RandAffine, RandFlip, RandScaleIntensity, RandShiftIntensity

        rot = math.radians(float(config.rotate_deg))
        self.flips = [RandFlip(prob=config.flip_prob, spatial_axis=a) for a in range(3)]
        self.affine = RandAffine(
            prob=config.affine_prob,
            rotate_range=(rot, rot, rot),
            scale_range=(config.scale,) * 3,
            padding_mode="border",
        )
        self.intensity = [
            RandScaleIntensity(factors=config.intensity_scale, prob=config.intensity_prob),
            RandShiftIntensity(offsets=config.intensity_shift, prob=config.intensity_prob),
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.config.enabled)

    def _seed_all(self, seed: int) -> tuple[np.random.Generator, int]:
        """Seed the MONAI transforms; return the parameter generator and the noise seed."""
        monai = [*self.flips, self.affine, *self.intensity]
        seeds = np.random.SeedSequence(seed).generate_state(len(monai) + 2)
        for transform, s in zip(monai, seeds):
            transform.set_random_state(seed=int(s))
        return np.random.default_rng(int(seeds[-2])), int(seeds[-1])

    def one(self, image: torch.Tensor, label: torch.Tensor, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one patch: image (C, x, y, z) float, label (x, y, z) int."""
        rng, noise_seed = self._seed_all(seed)
        dtype = image.dtype  # MONAI computes in float32
        lab = label[None].to(image.dtype)
        for flip in self.flips:
            image = flip(image, randomize=True)
            lab = flip(lab, randomize=False)
        image = self.affine(image, mode="bilinear", randomize=True)
        lab = self.affine(lab, mode="nearest", randomize=False)
        image = self._intensity(_plain(image), rng, noise_seed)
        return image.to(dtype), _plain(lab)[0].round().to(label.dtype)

    def _intensity(self, image: torch.Tensor, rng: np.random.Generator, noise_seed: int
                   ) -> torch.Tensor:
        """The image-only transforms, in the module docstring's order."""
        c = self.config
        if rng.random() < c.noise_prob:
            generator = torch.Generator(device=image.device).manual_seed(noise_seed)
            image = ia.gaussian_noise(image, float(rng.uniform(*c.noise_std)), generator)
        if rng.random() < c.blur_prob:
            image = _per_channel(image, rng, BLUR_CHANNEL_PROB, lambda x: ia.gaussian_blur(
                x, rng.uniform(*c.blur_sigma, size=3).tolist()))
        if rng.random() < c.brightness_prob:
            image = _per_channel(image, rng, 1.0, lambda x: x * ia.draw_factor(
                rng, *c.brightness_range))
        for transform in self.intensity:
            image = _plain(transform(image))
        if rng.random() < c.contrast_prob:
            image = _per_channel(image, rng, 1.0, lambda x: ia.contrast(
                x, ia.draw_factor(rng, *c.contrast_range)))
        if rng.random() < c.lowres_prob:
            image = _per_channel(image, rng, LOWRES_CHANNEL_PROB, lambda x: ia.low_resolution(
                x, float(rng.uniform(*c.lowres_scale))))
        for prob, invert in ((c.inverted_gamma_prob, True), (c.gamma_prob, False)):
            if rng.random() < prob:
                image = _per_channel(image, rng, 1.0, lambda x, inv=invert: ia.gamma(
                    x, ia.draw_factor(rng, *c.gamma_range), inv))
        return image

    def __call__(self, image: torch.Tensor, label: torch.Tensor, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch; returns new tensors on the same device."""
        if not self.enabled:
            return image, label
        pairs = [self.one(image[b], label[b], seed * 1009 + b) for b in range(image.shape[0])]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _per_channel(image: torch.Tensor, rng: np.random.Generator, prob: float, fn: Any
                 ) -> torch.Tensor:
    """``fn`` applied to each channel (x, y, z) of ``image`` with probability ``prob``."""
    return torch.stack([fn(x) if prob >= 1.0 or rng.random() < prob else x for x in image])


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's MetaTensor (or a NumPy array)."""
    if hasattr(x, "as_tensor"):
        return x.as_tensor()
    return torch.as_tensor(x)
