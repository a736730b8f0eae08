"""Argmax over the channel axis, as a running maximum (our own; measured faster), and the
one rule for the dtype of the label maps medseg returns.

``torch.argmax(t, dim=0)`` over the outer axis of a (K, x, y, z) CPU tensor walks
K strided values per voxel; K elementwise passes over (x, y, z) are several times
faster (6 classes on 192 x 192 x 144: 1.02 s against 0.08 s on 2 cores) and need
two (x, y, z) temporaries. Ties go to the first channel, as with ``torch.argmax``.

Label dtype: uint8 when every label fits (``num_classes <= 256``, labels 0..255),
uint16 up to 65536 classes; the same rule in NumPy (:func:`label_dtype`) and torch
(:func:`torch_label_dtype`).
"""

from __future__ import annotations

import numpy as np
import torch

from medseg.errors import UsageError

__all__ = ["MAX_CLASSES", "argmax_channels", "argmax_labels", "label_dtype", "torch_label_dtype"]

#: Most classes (background included) a medseg label map holds: labels 0..65535 (uint16).
MAX_CLASSES = 1 << 16

_TORCH = {np.dtype(np.uint8): torch.uint8, np.dtype(np.uint16): torch.uint16}
#: Integer dtypes whose CPU kernels lack ``masked_fill_`` (torch 2.x): argmax into them
#: goes through a wider temporary.
_NO_MASKED_FILL = (torch.uint16, torch.uint32, torch.uint64)


def label_dtype(num_classes: int) -> np.dtype:
    """The dtype of a label map with ``num_classes`` classes (background included).

    uint8 when every label fits in it (``num_classes <= 256``: labels 0..255), uint16 up
    to :data:`MAX_CLASSES` (65536).

    Raises
    ------
    UsageError : ``num_classes`` below 1 or above 65536.
    """
    if not 1 <= int(num_classes) <= MAX_CLASSES:
        raise UsageError(f"num_classes must be 1..{MAX_CLASSES} (labels 0..{MAX_CLASSES - 1}), "
                         f"got {num_classes}")
    return np.dtype(np.uint8) if int(num_classes) <= 256 else np.dtype(np.uint16)


def torch_label_dtype(num_classes: int) -> torch.dtype:
    """:func:`label_dtype` as a torch dtype (``torch.uint8`` or ``torch.uint16``)."""
    return _TORCH[label_dtype(num_classes)]


def argmax_labels(probabilities: np.ndarray) -> np.ndarray:
    """Label map (x, y, z) of ``probabilities`` (K, x, y, z), as :func:`label_dtype`."""
    labels = np.argmax(probabilities, axis=0)
    return labels.astype(label_dtype(probabilities.shape[0]), copy=False)


def argmax_channels(values: torch.Tensor, out: torch.Tensor,
                    divisor: torch.Tensor | None = None) -> torch.Tensor:
    """``out = argmax_k values[k] / divisor`` over the first axis of ``values`` (K, ...).

    ``divisor`` (the spatial shape of ``values``) is optional; each channel is
    divided by it and rounded to ``values.dtype`` before the comparison. ``out``
    (integer, the spatial shape) is written in place and returned; a uint16 ``out``
    (no ``masked_fill_`` on the CPU) is computed in int32 and copied in.
    """
    if out.dtype in _NO_MASKED_FILL:
        wide = argmax_channels(values, torch.empty(out.shape, dtype=torch.int32,
                                                   device=out.device), divisor)
        return out.copy_(wide)

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
