"""Random augmentation of training patches with MONAI's array transforms, seeded, on any device.

Per patch, in this order: a flip along each spatial axis (``RandFlip``), a
rotation + scaling (``RandAffine``; bilinear for the image, nearest for the
label, the same random parameters for both), an intensity scale and shift
(``RandScaleIntensity``, ``RandShiftIntensity``) and a gamma change
(``RandAdjustContrast``) of the image. The batch stays on its device, so on a
GPU the augmentation runs there.

Every call takes a ``seed``; patch ``b`` of the batch draws from
``seed + b``-derived MONAI random states, so the same seed gives the same result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["Augmenter"]


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
        from monai.transforms import (
            RandAdjustContrast,
            RandAffine,
            RandFlip,
            RandScaleIntensity,
            RandShiftIntensity,
        )

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
            RandAdjustContrast(prob=config.gamma_prob, gamma=tuple(config.gamma_range)),
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.config.enabled)

    def _seed_all(self, seed: int) -> None:
        seeds = np.random.SeedSequence(seed).generate_state(len(self.flips) + 1 + len(self.intensity))
        for transform, s in zip([*self.flips, self.affine, *self.intensity], seeds):
            transform.set_random_state(seed=int(s))

    def one(self, image: torch.Tensor, label: torch.Tensor, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one patch: image (C, x, y, z) float, label (x, y, z) int."""
        self._seed_all(seed)
        lab = label[None].to(image.dtype)
        for flip in self.flips:
            image = flip(image, randomize=True)
            lab = flip(lab, randomize=False)
        image = self.affine(image, mode="bilinear", randomize=True)
        lab = self.affine(lab, mode="nearest", randomize=False)
        for transform in self.intensity:
            image = transform(image)
        return _plain(image), _plain(lab)[0].round().to(label.dtype)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch; returns new tensors on the same device."""
        if not self.enabled:
            return image, label
        pairs = [self.one(image[b], label[b], seed * 1009 + b) for b in range(image.shape[0])]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's MetaTensor (or a NumPy array)."""
    if hasattr(x, "as_tensor"):
        return x.as_tensor()
    return torch.as_tensor(x)
