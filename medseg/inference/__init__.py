"""Inference: sliding window with Gaussian blending, mirroring TTA, slab-wise argmax.

Public API::

    sliding_window(predictor, image, window, ...)            -> (B, K, x, y, z)
    sliding_window_argmax(predictor, image, window, ...)     -> (B, x, y, z) uint8
    estimate_peak_memory(image_shape, num_classes, roi_size, ...) -> bytes
    importance_map(roi_size), window_starts(size, roi, overlap)
    predict_volume(model_or_checkpoint, volume, output="labels") -> Volume on the input grid
    predict_case(model, volume, PredictOptions(...), Runtime) -> Prediction (labels,
        optional probabilities, step timings)
    LoadedModel(module, card)  -- a network of your own with its model card
    LoadedModel((net_a, net_b), card), predict_case(run_dir | [ckpt, ...], ...)  -- ensembles
        (the mean of the members' softmax is blended)
    (from medseg.inference.predict and medseg.sources, imported lazily)
"""

from __future__ import annotations

import importlib
from typing import Any

from medseg.inference.memory import estimate_peak_memory, format_bytes
from medseg.inference.sliding_window import sliding_window, sliding_window_argmax
from medseg.inference.windows import importance_map, window_starts

__all__ = [
    "LoadedModel",
    "PredictOptions",
    "estimate_peak_memory",
    "format_bytes",
    "importance_map",
    "predict_case",
    "predict_volume",
    "sliding_window",
    "sliding_window_argmax",
    "window_starts",
]

_LAZY = {"predict_volume": "medseg.inference.predict", "predict_case": "medseg.inference.predict",
         "PredictOptions": "medseg.inference.predict", "LoadedModel": "medseg.sources"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medseg.inference' has no attribute {name!r}")
