"""Training augmentation: each of nnU-Net's intensity transforms at probability 1 against a
hand calculation or scipy, probability 0 as identity, seeding, and the label left alone by
everything but the spatial transforms."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.config import AugmentConfig
from medseg.data import intensity_augment as ia
from medseg.data.augment import Augmenter

PROBS = [f.name for f in dataclasses.fields(AugmentConfig) if f.name.endswith("_prob")]


def only(**settings) -> Augmenter:
    """An augmenter with every probability 0 except those in ``settings``."""
    cfg = AugmentConfig(**{name: 0.0 for name in PROBS})
    return Augmenter(dataclasses.replace(cfg, **settings))


def batch(channels: int = 1, shape=(16, 14, 12), seed: int = 0):
    """Image (2, C, x, y, z) float32 of uniform [0, 1) noise, label (2, x, y, z) with two labels."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand((2, channels, *shape), generator=gen)
    label = torch.zeros((2, *shape), dtype=torch.int64)
    label[:, 2:9, 3:7, 1:5] = 1
    label[:, 10:, :, 6:] = 2
    return image, label


def test_probability_zero_is_identity():
    image, label = batch(2)
    out, lab = only()(image, label, seed=3)
    assert torch.equal(out, image) and torch.equal(lab, label)


def test_noise_has_the_requested_std():
    image, label = batch(2, (32, 32, 32))
    out, lab = only(noise_prob=1.0, noise_std=[0.05, 0.05])(image, label, seed=1)
    noise = (out - image).numpy().ravel()  # 131072 draws: std of the std ~ 0.05 / 512
    assert noise.std() == pytest.approx(0.05, rel=0.01) and abs(noise.mean()) < 0.001
    assert torch.equal(lab, label)


def test_blur_equals_scipy_with_the_drawn_sigma():
    image, label = batch(4)
    sigma = 0.8
    blurred = [0, 0]
    for seed in range(3):
        out, lab = only(blur_prob=1.0, blur_sigma=[sigma, sigma])(image, label, seed)
        assert torch.equal(lab, label)
        for b in range(2):
            for c in range(4):
                x = image[b, c].numpy()
                ref = ndimage.gaussian_filter(x, sigma, mode="mirror")
                got = out[b, c].numpy()
                is_blurred = np.allclose(got, ref, atol=1e-6)
                assert is_blurred or np.array_equal(got, x)
                blurred[is_blurred] += 1
    assert min(blurred) > 0  # each channel blurred with probability 1/2: both happen


def test_gaussian_blur_with_one_sigma_per_axis():
    x = torch.rand((20, 11, 9), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = [0.55, 0.93, 0.0]  # z untouched
    ref = ndimage.gaussian_filter(x.numpy(), sigma, mode="mirror")
    np.testing.assert_allclose(ia.gaussian_blur(x, sigma).numpy(), ref, atol=1e-12)


def test_brightness_multiplies():
    image, label = batch(2)
    out, lab = only(brightness_prob=1.0, brightness_range=[1.2, 1.2])(image, label, 0)
    torch.testing.assert_close(out, image * 1.2)
    assert torch.equal(lab, label)


def test_contrast_keeps_the_mean_and_clips_to_the_range():
    image, label = batch(1)
    out, _ = only(contrast_prob=1.0, contrast_range=[0.5, 0.5])(image, label, 0)
    for b in range(2):
        x = image[b, 0]
        torch.testing.assert_close(out[b, 0], (x - x.mean()) * 0.5 + x.mean())
        assert float(out[b, 0].mean()) == pytest.approx(float(x.mean()), abs=1e-6)
    out, _ = only(contrast_prob=1.0, contrast_range=[2.0, 2.0])(image, label, 0)
    x = image[0, 0]
    expected = ((x - x.mean()) * 2 + x.mean()).clamp(float(x.min()), float(x.max()))
    torch.testing.assert_close(out[0, 0], expected)


def test_low_resolution():
    constant = torch.full((2, 1, 16, 14, 12), 3.5)
    label = batch()[1]
    out, lab = only(lowres_prob=1.0)(constant, label, 0)
    torch.testing.assert_close(out, constant)
    assert torch.equal(lab, label)
    # scale 1/2 by nearest picks the voxels 1, 3, 5, ... (centres of 2-voxel blocks)
    x = batch(1, (8, 8, 8))[0][0, 0]
    coarse = x[1::2, 1::2, 1::2][None, None]
    expected = F.interpolate(coarse, size=(8, 8, 8), mode="trilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(ia.low_resolution(x, 0.5), expected)


def _retain(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y - y.mean()) / y.std() * x.std() + x.mean()


@pytest.mark.parametrize("inverted", [False, True])
def test_gamma_and_inverted_gamma(inverted):
    image, label = batch(1)
    image[:, 0, 0, 0, 0], image[:, 0, 1, 0, 0] = 0.0, 1.0  # the range is exactly [0, 1]
    key = "inverted_gamma_prob" if inverted else "gamma_prob"
    out, lab = only(**{key: 1.0}, gamma_range=[2.0, 2.0])(image, label, 0)
    x = image[0, 0]
    y = 1 - (1 - x) ** 2 if inverted else x**2
    torch.testing.assert_close(out[0, 0], _retain(y, x))
    assert torch.equal(lab, label)


def test_draw_factor_is_below_or_above_one_half_the_time():
    rng = np.random.default_rng(0)
    draws = np.array([ia.draw_factor(rng, 0.7, 1.5) for _ in range(4000)])
    assert draws.min() >= 0.7 and draws.max() <= 1.5
    assert (draws < 1).mean() == pytest.approx(0.5, abs=0.03)  # uniform on [0.7, 1.5]: 0.375
    assert ia.draw_factor(rng, 2.0, 2.0) == 2.0


def test_same_seed_same_output_and_label_only_moved_by_spatial_transforms():
    image, label = batch(2)
    every = AugmentConfig(**{name: 1.0 for name in PROBS})
    aug = Augmenter(every)
    a, la = aug(image, label, seed=7)
    b, lb = aug(image, label, seed=7)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = aug(image, label, seed=8)
    assert not torch.equal(a, c)
    intensity = [p for p in PROBS if p not in ("flip_prob", "affine_prob")]
    _, lab = only(**{p: 1.0 for p in intensity})(image, label, seed=7)
    assert torch.equal(lab, label)
    flipped, lab = only(flip_prob=1.0)(image, label, seed=7)  # all three axes
    assert torch.equal(lab, label.flip(1, 2, 3)) and torch.equal(flipped, image.flip(2, 3, 4))
