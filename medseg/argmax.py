"""Argmax over the channel axis, as a running maximum (our own; measured faster).

``torch.argmax(t, dim=0)`` over the outer axis of a (K, x, y, z) CPU tensor walks
K strided values per voxel; K elementwise passes over (x, y, z) are several times
faster (6 classes on 192 x 192 x 144: 1.02 s against 0.08 s on 2 cores) and need
two (x, y, z) temporaries. Ties go to the first channel, as with ``torch.argmax``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["argmax_channels", "argmax_labels", "label_dtype"]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 for K <= 255 classes, uint16 above: the dtype of the label maps medseg returns."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """Label map (x, y, z) of ``probabilities`` (K, x, y, z), as :func:`label_dtype`."""
    labels = np.argmax(probabilities, axis=0)
    return labels.astype(label_dtype(probabilities.shape[0]), copy=False)


def argmax_channels(values: torch.Tensor, out: torch.Tensor,
                    divisor: torch.Tensor | None = None) -> torch.Tensor:
    """``out = argmax_k values[k] / divisor`` over the first axis of ``values`` (K, ...).

    ``divisor`` (the spatial shape of ``values``) is optional; each channel is
    divided by it and rounded to ``values.dtype`` before the comparison. ``out``
    (integer, the spatial shape) is written in place and returned.
    """
    def channel(k: int) -> torch.Tensor:
        if divisor is None:
            return values[k]
        return (values[k] / divisor).to(values.dtype)

    best = channel(0).clone() if divisor is None else channel(0)
    out.zero_()
    for k in range(1, values.shape[0]):
        value = channel(k)
        out.masked_fill_(value > best, k)
        torch.maximum(best, value, out=best)
    return out
