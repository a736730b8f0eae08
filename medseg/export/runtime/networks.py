"""The exported networks as predictors: ONNX files in ONNX Runtime, or OpenVINO IR in
OpenVINO, on the CPU.

Each network maps a window batch (n, C, x, y, z) float32 to logits (n, K, x, y, z)
float32 (a ``--fp16`` export casts inside the graph), through the engine medseg's own
``--backend onnxruntime|openvino`` uses (:mod:`medseg.inference.engines`, configured
there). The members of an ensemble combine as the manifest's ``combine`` says
(:func:`mean_softmax`), as ``medseg predict`` combines them
(:data:`medseg.sources.COMBINES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import CheckpointError, UsageError
from medseg.inference.engines import cache_folder, load_engine

__all__ = ["ENGINE_OF_FORMAT", "load_networks", "mean_softmax", "softmax"]

#: The manifest's ``format`` -> the engine that runs it.
ENGINE_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino"}


def load_networks(folder: Path, manifest: dict[str, Any], window: Sequence[int],
                  threads: int = 0, precision: str = "fp32") -> list[Any]:
    """The manifest's networks, each in the engine of its ``format``; ``window`` is the
    input of one window (C, x, y, z voxels), ``threads`` 0 the engine's choice (all cores),
    ``precision`` ``"bf16"`` for OpenVINO's bf16 (faster on CPUs with AMX; labels move).
    OpenVINO keeps its compiled networks in ``openvino/`` of medseg's cache folder
    (:func:`~medseg.inference.engines.cache_root`: ``$MEDSEG_CACHE``, ``off`` for none), so
    a later run loads them instead of compiling."""
    fmt = manifest.get("format")
    if fmt not in ENGINE_OF_FORMAT:
        raise CheckpointError(f"format {fmt!r}: this runner runs "
                              f"{' or '.join(ENGINE_OF_FORMAT)} networks", folder / "model.json")
    engine = ENGINE_OF_FORMAT[fmt]
    if precision != "fp32" and engine != "openvino":
        raise UsageError(f"{precision} runs in OpenVINO; this export is {fmt}: export it again "
                         "with --format openvino")
    blobs = cache_folder("openvino") if engine == "openvino" else None
    return [load_engine(engine, folder / name, threads, precision, window, cache_dir=blobs)
            for name in manifest["networks"]]


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of float logits along ``axis``, in float32."""
    values = np.asarray(logits, dtype=np.float32)
    values = np.exp(values - values.max(axis=axis, keepdims=True))
    values /= values.sum(axis=axis, keepdims=True)
    return values


def mean_softmax(members: Sequence[Any]):
    """The predictor of a ``mean_softmax`` ensemble: per window batch, the mean over
    ``members`` of softmax(logits) over channels (float32 probabilities)."""

    def run(batch: np.ndarray) -> np.ndarray:
        total = softmax(members[0](batch), 1)
        for member in members[1:]:
            total += softmax(member(batch), 1)
        total /= len(members)
        return total

    return run
