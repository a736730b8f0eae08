"""The sliding window in NumPy, for the runner: medseg's arithmetic or nnU-Net's.

The same windows, weights, flips and sums as :mod:`medseg.inference.sliding_window` with
:mod:`medseg.inference.windows` (whose placement and Gaussians come from the shared
:mod:`medseg.inference.placement`): MONAI's flush placement and Gaussian with float32 sums
(``blend`` ``"gaussian"`` / ``"constant"``), or nnU-Net's even placement, its float16
Gaussian, flips averaged in float32 and float16 accumulation (``"nnunet"``). A volume
smaller than the window along an axis is zero-padded symmetrically and cropped back.
Written again here because the torch driver accumulates torch tensors; the tests hold the
two to float32 rounding. The accumulator is the full (K, x, y, z) (the runner's outputs
are probabilities on the network grid, as ``medseg predict``'s default path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from medseg.card import WindowSettings
from medseg.inference.placement import (
    even_window_starts,
    flip_sets,
    gaussian_weights,
    nnunet_gaussian,
    window_starts,
)

__all__ = ["Predictor", "sliding_window"]

log = logging.getLogger(__name__)

#: (n, C, rx, ry, rz) float32 -> (n, K, rx, ry, rz) float32 (logits or probabilities).
Predictor = Callable[[np.ndarray], np.ndarray]


def sliding_window(predictor: Predictor, image: np.ndarray, window: WindowSettings,
                   progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Blend ``predictor`` over the windows of ``image`` (C, x, y, z) float32.

    Returns
    -------
    (K, x, y, z): float32, or float16 for ``blend="nnunet"`` (nnU-Net's logits).
    """
    roi = tuple(int(r) for r in window.roi_size)
    nnunet = window.blend == "nnunet"
    pad = [((r - n) // 2, r - n - (r - n) // 2) if n < r else (0, 0)
           for n, r in zip(image.shape[1:], roi)]
    if any(p != (0, 0) for p in pad):
        image = np.pad(image, [(0, 0)] + pad)
    shape = image.shape[1:]
    starts_of = even_window_starts if nnunet else window_starts
    xs, ys, zs = (starts_of(n, r, window.overlap) for n, r in zip(shape, roi))
    windows = [(x, y, z) for z in zs for y in ys for x in xs]
    axes = sorted(window.mirror_axes, reverse=True) if nnunet else list(window.mirror_axes)
    flips = flip_sets(axes)
    if nnunet:
        weight, dtype = nnunet_gaussian(roi), np.float16
    elif window.blend == "gaussian":
        weight, dtype = gaussian_weights(roi).astype(np.float32), np.float32
    else:
        weight, dtype = np.ones(roi, dtype=np.float32), np.float32
    acc = den = None
    log.debug("sliding window: %d windows of %s over %s, %d flips", len(windows), roi,
              shape, len(flips))
    for first in range(0, len(windows), window.batch_size):
        batch = windows[first:first + window.batch_size]
        preds = _predict(predictor, image, batch, roi, flips)
        if acc is None:
            acc = np.zeros((preds.shape[1], *shape), dtype=dtype)
            den = np.zeros(shape, dtype=dtype)
        for pred, start in zip(preds, batch):
            region = tuple(slice(s, s + r) for s, r in zip(start, roi))
            if nnunet:  # weight * pred in float32, added into float16 (nnU-Net's order)
                acc[(slice(None), *region)] += pred / len(flips) * weight
            else:
                acc[(slice(None), *region)] += pred * (weight / np.float32(len(flips)))
            den[region] += weight
        if progress is not None:
            progress(len(batch))
    acc /= den
    crop = tuple(slice(a, n - b) for (a, b), n in zip(pad, shape))
    return np.ascontiguousarray(acc[(slice(None), *crop)])


def _predict(predictor: Predictor, image: np.ndarray, batch: Sequence[tuple[int, int, int]],
             roi: tuple[int, int, int], flips: Sequence[tuple[int, ...]]) -> np.ndarray:
    """The predictor's output for the windows of ``batch``, summed over ``flips``."""
    x = np.stack([image[(slice(None), *(slice(s, s + r) for s, r in zip(start, roi)))]
                  for start in batch])
    total = None
    for flip in flips:
        dims = tuple(2 + a for a in flip)
        y = predictor(np.ascontiguousarray(np.flip(x, dims)) if dims else x)
        y = np.flip(y, dims) if dims else y
        total = y.astype(np.float32) if total is None else total + y
    return total  # type: ignore[return-value]
