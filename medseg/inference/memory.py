"""Pre-flight estimate of sliding-window memory, for callers to log before a big run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medseg.errors import UsageError, check_option
from medseg.inference.windows import window_starts

__all__ = ["estimate_peak_memory", "format_bytes"]


def estimate_peak_memory(
    image_shape: Sequence[int],
    num_classes: int,
    roi_size: int | Sequence[int],
    batch_size: int = 4,
    out_dtype: torch.dtype = torch.float32,
    output: str = "probabilities",
    overlap: float = 0.5,
    mirror: bool = False,
) -> int:
    """Bytes that sliding-window inference holds at its peak, excluding the predictor's own
    activations and weights.

    Parameters
    ----------
    image_shape : (B, C, x, y, z) of the float32 input (the input itself is counted).
    num_classes : K, channels the predictor returns.
    roi_size : window (x, y, z) in voxels.
    batch_size : windows per predictor call.
    out_dtype : accumulator dtype.
    output : ``"probabilities"`` (:func:`sliding_window`, the (B, K, x, y, z)
        accumulator plus a float32 weight sum) or ``"labels"``
        (:func:`sliding_window_argmax`: a K * x * y * span slab and its weight
        sum, with span = rz + z step, plus the uint8 label map and the
        temporaries of finalising one z step).
    overlap : as passed to the sliding window (sets the z step, hence the slab span).
    mirror : True when mirroring TTA is on (one more batch-sized output is alive).
    """
    output = check_option(output, ("probabilities", "labels"), "output")
    if len(image_shape) != 5:
        raise UsageError(f"image_shape must be (B, C, x, y, z), got {list(image_shape)}")
    b, c, *spatial = (int(s) for s in image_shape)
    roi = (roi_size,) * 3 if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
    padded = [max(n, r) for n, r in zip(spatial, roi)]
    item = torch.empty((), dtype=out_dtype).element_size()
    k = int(num_classes)
    window = math.prod(roi)
    total = b * c * math.prod(spatial) * 4  # the input
    if padded != spatial:
        total += b * c * math.prod(padded) * 4
    total += batch_size * window * (c * 4 + k * 4 * (3 if mirror else 2)) + 2 * window * 4
    if output == "probabilities":
        return total + b * k * math.prod(padded) * item + math.prod(padded) * 4  # + weight sum
    zs = window_starts(padded[2], roi[2], overlap)
    step = max((q - p for p, q in zip(zs, zs[1:])), default=0)
    span = min(padded[2], roi[2] + step)
    plane = padded[0] * padded[1]
    total += b * math.prod(padded)  # uint8 labels
    total += (k * item + 4) * plane * span  # slab accumulator and its weight sum
    finalised = span - roi[2] if span > roi[2] else span  # slices argmaxed at a time
    total += (k * 4 + 8) * plane * finalised  # blended float32 slices + int64 argmax
    return total


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"


