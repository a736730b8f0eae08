"""medseg: segmentation of 3D medical volumes (CT, MRI).

Public API (imported lazily so ``import medseg`` stays cheap)::

    medseg.Volume, medseg.read_volume, medseg.write_volume
    medseg.MedsegError
    medseg.predict_volume, medseg.PredictOptions   (inference)
    medseg.ModelCard, medseg.WindowSettings        (what a trained model needs)
    medseg.Runtime                                 (device, precision, torchrun rank)
    medseg.metrics.evaluate_arrays   (evaluation)

Arrays are indexed (x, y, z), channel first when present; affines map voxel
indices to RAS+ millimetres.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Volume": "medseg.volume",
    "read_volume": "medseg.io",
    "write_volume": "medseg.io",
    "MedsegError": "medseg.errors",
    "predict_volume": "medseg.inference",
    "PredictOptions": "medseg.inference.predict",
    "ModelCard": "medseg.card",
    "WindowSettings": "medseg.card",
    "Runtime": "medseg.runtime",
}
_SUBMODULES = {
    "io", "metrics", "models", "losses", "transforms", "data", "inference",
    "evaluation", "training", "checkpoint", "config", "report", "errors", "volume",
    "card", "runtime", "results", "stats", "agreement",
}

#: Written out so that static tools see it; the names of ``_LAZY``, sorted, and ``__version__``.
__all__ = ["MedsegError", "ModelCard", "PredictOptions", "Runtime", "Volume", "WindowSettings",
           "predict_volume", "read_volume", "write_volume", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"medseg.{name}")
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
