"""Network registry: ``create(name, in_channels, out_channels, **kwargs)`` and ``available()``.

Every network maps (B, in_channels, x, y, z) float to logits
(B, out_channels, x, y, z) for any x, y, z; see each class for its options:

* ``unet3d`` -- :class:`medseg.models.unet3d.UNet3d`
* ``deeplab3d`` -- :class:`medseg.models.deeplab3d.DeepLab3d` (v3+ / v3)
* ``fcn3d`` -- :class:`medseg.models.fcn3d.FCN3d` (8s / 16s / 32s)

A created model carries ``model.medseg_config``, a JSON-serialisable dict with
``name``, ``in_channels``, ``out_channels`` and every option at its resolved
value, so ``create(**model.medseg_config)`` rebuilds the same architecture.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from medseg.errors import UsageError, check_keywords, check_option

__all__ = ["create", "available"]

_REGISTRY: dict[str, tuple[str, str]] = {
    "unet3d": ("medseg.models.unet3d", "UNet3d"),
    "deeplab3d": ("medseg.models.deeplab3d", "DeepLab3d"),
    "fcn3d": ("medseg.models.fcn3d", "FCN3d"),
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    check_option(name, _REGISTRY, "model")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def _check_kwargs(name: str, cls: type[nn.Module], kwargs: dict[str, Any]) -> None:
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self",)]
    valid = [p for p in params if p not in ("in_channels", "out_channels")] + ["seed"]
    check_keywords(kwargs, valid, f"model {name!r}")


def create(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build the network ``name`` for ``in_channels`` image channels and ``out_channels`` classes.

    Parameters
    ----------
    name : one of :func:`available`.
    in_channels : channels C of the input (B, C, x, y, z).
    out_channels : classes K of the logits (B, K, x, y, z), background included.
    seed : optional int; the weights are initialised from ``torch.manual_seed(seed)``
        without touching the global random state (same seed, same weights).
    **kwargs : options of the network class (a typo raises UsageError naming the closest).

    Raises
    ------
    UsageError
        Unknown name or option, or an option value out of range.
    """
    cls = model_class(name)
    _check_kwargs(name, cls, kwargs)
    seed = kwargs.pop("seed", None)
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UsageError(f"seed must be an int or None, got {seed!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(in_channels, out_channels, **kwargs)
    else:
        model = cls(in_channels, out_channels, **kwargs)
    config = {"name": name, "in_channels": in_channels, "out_channels": out_channels}
    config.update(model.hparams)
    if seed is not None:
        config["seed"] = seed
    model.medseg_config = config
    return model
