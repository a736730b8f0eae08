"""The network an nnU-Net v2 plans configuration describes (dynamic-network-architectures).

A plans configuration describes its network in one of two ways:

- new style (nnU-Net >= 2.4): ``"architecture": {"network_class_name": ..., "arch_kwargs":
  {...}, "_kw_requires_import": [...]}``, where the class and the ``arch_kwargs`` entries named
  in ``_kw_requires_import`` are dotted import paths (``"torch.nn.LeakyReLU"``);
- old style (nnU-Net < 2.4, and TotalSegmentator's released weights): ``UNet_class_name``
  (``PlainConvUNet`` or ``ResidualEncoderUNet``), ``UNet_base_num_features``,
  ``unet_max_num_features``, ``n_conv_per_stage_encoder``, ``n_conv_per_stage_decoder``,
  ``pool_op_kernel_sizes``, ``conv_kernel_sizes`` (and ``num_pool_per_axis``).

:func:`architecture_of` turns either into the new style (the old one the way nnU-Net reads it:
features double per stage up to the maximum, instance norm with eps 1e-5 and affine, no
dropout, leaky ReLU, conv bias on) and :func:`build_network` builds it. Dotted paths are
imported only under :data:`ALLOWED_PREFIXES`, and what they name must be a ``torch.nn.Module``
class defined there: a plans file cannot make medseg import or call anything else.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medseg.errors import CheckpointError

__all__ = ["ALLOWED_PREFIXES", "architecture_of", "build_network", "OLD_STYLE_KEYS"]

log = logging.getLogger(__name__)

#: Module prefixes a plans file may name classes from.
ALLOWED_PREFIXES = ("dynamic_network_architectures.", "torch.nn.")

#: The keys of the old (nnU-Net < 2.4) architecture description, replaced by "architecture".
OLD_STYLE_KEYS = ("UNet_class_name", "UNet_base_num_features", "unet_max_num_features",
                  "n_conv_per_stage_encoder", "n_conv_per_stage_decoder", "num_pool_per_axis",
                  "pool_op_kernel_sizes", "conv_kernel_sizes")

_OLD_REQUIRED = ("UNet_class_name", "UNet_base_num_features", "unet_max_num_features",
                 "n_conv_per_stage_encoder", "n_conv_per_stage_decoder", "pool_op_kernel_sizes",
                 "conv_kernel_sizes", "patch_size")
_DNA_UNETS = "dynamic_network_architectures.architectures.unet"
_OLD_CLASSES = {"PlainConvUNet": "n_conv_per_stage", "ResidualEncoderUNet": "n_blocks_per_stage"}
_NEW_KEYS = ("network_class_name", "arch_kwargs", "_kw_requires_import")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def architecture_of(plans_configuration: Mapping,
                    source: Path | None = None) -> dict[str, Any]:
    """The new-style architecture description of a (resolved) plans configuration.

    Parameters
    ----------
    plans_configuration : mapping
        ``plans["configurations"][name]`` with ``inherits_from`` already resolved.
    source : Path, optional
        The plans file, named in error messages.

    Returns
    -------
    dict
        ``{"network_class_name": str, "arch_kwargs": dict, "_kw_requires_import": list}``.

    Raises
    ------
    CheckpointError
        Neither description is there, or the old one names an unknown class or lacks a key.
    """
    architecture = plans_configuration.get("architecture")
    if isinstance(architecture, Mapping) and all(key in architecture for key in _NEW_KEYS):
        return {"network_class_name": architecture["network_class_name"],
                "arch_kwargs": dict(architecture["arch_kwargs"]),
                "_kw_requires_import": list(architecture["_kw_requires_import"])}
    if architecture is None and "UNet_class_name" in plans_configuration:
        return _from_old_style(plans_configuration, source)
    raise CheckpointError(
        "unknown plans format: the configuration describes its network neither with "
        f"'architecture' {{{', '.join(_NEW_KEYS)}}} (nnU-Net >= 2.4) nor with 'UNet_class_name' "
        "and its companions (nnU-Net < 2.4)", source)


def _from_old_style(config: Mapping, source: Path | None) -> dict[str, Any]:
    """Map the nnU-Net < 2.4 keys to the new description, as nnU-Net itself reads them."""
    missing = [key for key in _OLD_REQUIRED if key not in config]
    if missing:
        raise CheckpointError(f"old-style plans configuration lacks {', '.join(missing)}", source)
    class_name = config["UNet_class_name"]
    if class_name not in _OLD_CLASSES:
        raise CheckpointError(f"old-style plans name the network {class_name!r}: medseg maps "
                              f"only {' and '.join(map(repr, _OLD_CLASSES))}", source)
    stages = len(config["n_conv_per_stage_encoder"])
    dims = len(config["patch_size"])
    base, top = int(config["UNet_base_num_features"]), int(config["unet_max_num_features"])
    kwargs = {
        "n_stages": stages,
        "features_per_stage": [min(base * 2 ** i, top) for i in range(stages)],
        "conv_op": f"torch.nn.modules.conv.Conv{dims}d",
        "kernel_sizes": [list(k) for k in config["conv_kernel_sizes"]],
        "strides": [list(s) for s in config["pool_op_kernel_sizes"]],
        _OLD_CLASSES[class_name]: list(config["n_conv_per_stage_encoder"]),
        "n_conv_per_stage_decoder": list(config["n_conv_per_stage_decoder"]),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return {"network_class_name": f"{_DNA_UNETS}.{class_name}", "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def build_network(plans_configuration: Mapping, in_channels: int, out_channels: int,
                  source: Path | None = None) -> torch.nn.Module:
    """The dynamic-network-architectures network a plans configuration describes.

    Parameters
    ----------
    plans_configuration : mapping
        The resolved plans configuration (new- or old-style architecture description).
    in_channels : int
        Input channels (``len(dataset.json["channel_names"])``).
    out_channels : int
        Output channels (labels, or regions for region-based models).
    source : Path, optional
        The plans file, named in error messages.

    Returns
    -------
    torch.nn.Module
        In eval mode with deep supervision off, weights freshly initialised (load a
        checkpoint's next). It works in nnU-Net's frame: input ``(n, C, a0, a1, a2)`` (``(n, C,
        a1, a2)`` for a 2d configuration), output logits ``(n, out_channels, a0, a1, a2)``.

    Raises
    ------
    CheckpointError
        The description is unknown, names a class outside :data:`ALLOWED_PREFIXES` or one that
        is not a ``torch.nn.Module``, or the class refuses its arguments.
    """
    architecture = architecture_of(plans_configuration, source)
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        if kwargs.get(key) is not None:
            kwargs[key] = _module_class(kwargs[key], f"arch_kwargs[{key!r}]", source)
    network_class = _module_class(architecture["network_class_name"], "network_class_name",
                                  source)
    kwargs["deep_supervision"] = False
    try:
        network = network_class(input_channels=in_channels, num_classes=out_channels, **kwargs)
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError,
            AssertionError) as exc:  # dynamic-network-architectures checks with assert
        detail = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise CheckpointError(f"{network_class.__name__} refuses the plans' arch_kwargs: "
                              f"{detail}", source) from exc
    return network.eval()


def _module_class(name: Any, field: str, source: Path | None) -> type[torch.nn.Module]:
    """Import the ``torch.nn.Module`` class at the dotted path ``name``, allow-listed."""
    if not (isinstance(name, str) and _DOTTED.fullmatch(name)
            and name.startswith(ALLOWED_PREFIXES)):
        raise CheckpointError(f"{field} is {name!r}: medseg imports network classes only from "
                              f"{' and '.join(p + '*' for p in ALLOWED_PREFIXES)}", source)
    found = _locate(name)
    if found is None and name.startswith(ALLOWED_PREFIXES[0]):
        found = _find_in_architectures(name.rsplit(".", 1)[1])
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)
            and found.__module__.startswith(ALLOWED_PREFIXES)):
        what = "nothing" if found is None else (
            f"the {type(found).__name__} {getattr(found, '__module__', '?')}."
            f"{getattr(found, '__qualname__', '?')}")
        raise CheckpointError(f"{field} is {name!r}, which names {what}: expected a "
                              "torch.nn.Module class of dynamic_network_architectures or "
                              "torch.nn", source)
    return found


def _locate(name: str) -> object | None:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        return found
    return None


def _find_in_architectures(class_name: str) -> object | None:
    """A dynamic_network_architectures class that moved: look it up by name, as nnU-Net does."""
    import dynamic_network_architectures.architectures as architectures

    names = sorted((info.name for info in pkgutil.iter_modules(architectures.__path__)),
                   key=lambda name: name != "unet")  # the U-Nets first: no optional imports
    for name in names:
        try:
            module = importlib.import_module(f"{architectures.__name__}.{name}")
        except (ImportError, RuntimeError) as exc:  # e.g. an optional timm/torchvision stack
            log.debug("skipping %s: %s", name, exc)
            continue
        found = getattr(module, class_name, None)
        if isinstance(found, type):
            log.info("network class %s found in %s", class_name, module.__name__)
            return found
    return None
