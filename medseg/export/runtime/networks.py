"""The exported networks as predictors: ONNX files run by ONNX Runtime on the CPU.

Each network maps a window batch (n, C, x, y, z) float32 to logits (n, K, x, y, z)
float32 (a ``--fp16`` export casts inside the graph). The members of an ensemble combine
as the manifest's ``combine`` says (:func:`ensemble`), as ``medseg predict`` combines them
(:data:`medseg.sources.COMBINES`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from medseg.errors import UsageError

__all__ = ["OnnxNetwork", "mean_softmax", "softmax"]

INPUT, OUTPUT = "image", "logits"


class OnnxNetwork:
    """One ONNX network in an ``onnxruntime.InferenceSession`` (CPU); ``threads`` 0 lets
    ONNX Runtime choose."""

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("the runner needs onnxruntime: pip install onnxruntime "
                             "(see requirements.txt)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        self.path = os.fspath(path)
        self.session = ort.InferenceSession(self.path, options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch,
                                                                         dtype=np.float32)})
        return out.astype(np.float32, copy=False)


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    """Softmax of float logits along ``axis``, in float32."""
    values = np.asarray(logits, dtype=np.float32)
    values = np.exp(values - values.max(axis=axis, keepdims=True))
    values /= values.sum(axis=axis, keepdims=True)
    return values


def mean_softmax(members: Sequence[OnnxNetwork]):
    """The predictor of a ``mean_softmax`` ensemble: per window batch, the mean over
    ``members`` of softmax(logits) over channels (float32 probabilities)."""

    def run(batch: np.ndarray) -> np.ndarray:
        total = softmax(members[0](batch), 1)
        for member in members[1:]:
            total += softmax(member(batch), 1)
        total /= len(members)
        return total

    return run
