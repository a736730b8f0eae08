"""Network registry: ``create(name, in_channels, out_channels, **kwargs)``, ``register``,
and ``build(spec)``: the network a model card's :class:`~medseg.card.NetworkSpec` describes.

Every network maps (B, in_channels, x, y, z) float to logits
(B, out_channels, x, y, z) for any x, y, z; see each class for its options:

* ``unet3d`` -- :class:`medseg.models.unet3d.UNet3d`
* ``deeplab3d`` -- :class:`medseg.models.deeplab3d.DeepLab3d` (v3+ / v3)
* ``fcn3d`` -- :class:`medseg.models.fcn3d.FCN3d` (8s / 16s / 32s)
* ``nnunet`` -- :class:`medseg.models.nnunet.NnunetFolds`, the folds of an imported nnU-Net
  model (built from its plans' architecture description; not listed by ``medseg models``)

:func:`register` adds a network class under a new name.

A created model carries ``model.medseg_config``, a JSON-serialisable dict with
``name``, then every parameter of the class's constructor, in signature order, at
the value it was bound to (defaults applied; tuples become lists), and ``seed``
when one was given. It is read from the signature, never copied by hand, so
``create(**model.medseg_config)`` rebuilds the same architecture and a new
constructor argument is recorded (and rebuilt from checkpoints) without further code.
Options whose default is ``None`` ("derived", e.g. DeepLab's ``rates``) are
recorded as ``None`` and derived again on rebuilding.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medseg.errors import UsageError, check_keywords, check_option

if TYPE_CHECKING:
    from medseg.card import NetworkSpec

__all__ = ["create", "build", "available", "register", "unregister", "model_class",
           "required_options"]

#: name -> the class, or (module, class name) for the built-ins (imported on first use).
_REGISTRY: dict[str, type[nn.Module] | tuple[str, str]] = {
    "unet3d": ("medseg.models.unet3d", "UNet3d"),
    "deeplab3d": ("medseg.models.deeplab3d", "DeepLab3d"),
    "fcn3d": ("medseg.models.fcn3d", "FCN3d"),
    "nnunet": ("medseg.models.nnunet", "NnunetFolds"),
}
_BUILTIN = frozenset(_REGISTRY)
#: Keys of ``medseg_config`` that are not constructor parameters.
_RESERVED = ("name", "seed")
_LEADING = ("in_channels", "out_channels")


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(_REGISTRY)


def required_options(name: str) -> list[str]:
    """Constructor options of ``name`` without a default (besides the channel counts)."""
    signature = inspect.signature(model_class(name))
    return [p.name for p in signature.parameters.values()
            if p.default is inspect.Parameter.empty and p.name not in _LEADING]


def model_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``."""
    check_option(name, _REGISTRY, "model")
    entry = _REGISTRY[name]
    if isinstance(entry, tuple):
        module, cls = entry
        return getattr(importlib.import_module(module), cls)
    return entry


def register(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Make :func:`create` (and so checkpoints) build ``cls`` under ``name``; returns ``cls``.

    Parameters
    ----------
    name : a new model name (a built-in or already registered name is refused).
    cls : an ``nn.Module`` subclass whose constructor takes ``in_channels`` and
        ``out_channels`` first and names every other option (no ``*args`` /
        ``**kwargs``, none called ``name`` or ``seed``): the options recorded in
        ``medseg_config`` are read from that signature.

    Raises
    ------
    UsageError
        ``name`` is taken or not a non-empty string, or ``cls`` does not fit.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise UsageError(f"model name {name!r} is already registered; unregister it first")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UsageError(f"model {name!r} must be a torch.nn.Module subclass, got {cls!r}")
    _signature(name, cls)
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a model added with :func:`register` (the built-in networks stay)."""
    check_option(name, _REGISTRY, "model")
    if name in _BUILTIN:
        raise UsageError(f"model {name!r} is built in and cannot be unregistered")
    del _REGISTRY[name]


def _signature(name: str, cls: type[nn.Module]) -> inspect.Signature:
    """The constructor signature of ``cls``, checked to be recordable in ``medseg_config``."""
    signature = inspect.signature(cls)
    params = list(signature.parameters.values())
    if tuple(p.name for p in params[:2]) != _LEADING:
        raise UsageError(
            f"model {name!r}: the constructor must take (in_channels, out_channels, ...), "
            f"got ({', '.join(p.name for p in params)})"
        )
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            stars = "*" if p.kind == p.VAR_POSITIONAL else "**"
            raise UsageError(
                f"model {name!r}: constructor parameter {stars}{p.name} hides options from "
                "medseg_config; name every option in the signature"
            )
        if p.name in _RESERVED:
            raise UsageError(
                f"model {name!r}: constructor parameter {p.name!r} clashes with the "
                f"medseg_config key {p.name!r}; rename it"
            )
    return signature


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

    Returns
    -------
    The network, with ``medseg_config`` (module docstring) set.

    Raises
    ------
    UsageError
        Unknown name or option, an option value out of range, or one that is
        not JSON-serialisable (it could not be stored in a checkpoint).
    """
    cls = model_class(name)
    signature = _signature(name, cls)
    options = [p for p in signature.parameters if p not in _LEADING]
    check_keywords(kwargs, [*options, "seed"], f"model {name!r}")
    seed = kwargs.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UsageError(f"seed must be an int or None, got {seed!r}")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = cls(in_channels, out_channels, **kwargs)
    bound = signature.bind(in_channels, out_channels, **kwargs)
    bound.apply_defaults()
    config = {"name": name}
    config.update({k: _json_value(v, name, k) for k, v in bound.arguments.items()})
    if seed is not None:
        config["seed"] = seed
    model.medseg_config = config
    return model


def build(spec: NetworkSpec) -> nn.Module:
    """A new network of the architecture ``spec`` describes (weights initialised, not loaded).

    ``spec`` is a model card's :class:`~medseg.card.NetworkSpec` (name, channel counts
    and every other constructor option, as ``model.medseg_config`` recorded them); the
    network is :func:`create` ``(spec.name, spec.in_channels, spec.out_channels,
    **spec.options)``.

    Raises
    ------
    UsageError
        As :func:`create`: an unknown name or options the class does not take.
    """
    return create(spec.name, spec.in_channels, spec.out_channels, **dict(spec.options))


def _json_value(value: Any, model: str, parameter: str) -> Any:
    """``value`` with tuples as lists, if JSON can store it exactly; else UsageError."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(v, model, parameter) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, model, parameter) for k, v in value.items()}
    raise UsageError(
        f"model {model!r} option {parameter}={value!r} ({type(value).__name__}) cannot be "
        "recorded in medseg_config: expected None, bool, int, finite float, str, or "
        "lists / str-keyed dicts of them"
    )
