"""Training memory of a network on a patch, estimated without running it.

One forward pass runs on PyTorch's ``meta`` device (shapes only: no memory, no compute),
inside :func:`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd
keeps for the backward pass. The estimate is their bytes (each tensor once) plus:

* the weights and their gradients (the optimiser's buffers are made after the backward
  pass has freed the activations, so they do not add to the peak of a large patch);
* the loss's softmax / one-hot / gradient copies of the logits (the batch itself exists
  before the step);
* the backward pass's transient gradients: ``BACKWARD_FACTOR`` times the largest saved
  activation (the gradient arriving at a layer and the one it sends on).

Measured against the peak resident memory of one CPU training step (``tests/planning``),
the estimate is within 30 %. On a GPU under bf16/fp16 autocast activations take half the
bytes, so the fp32 estimate is conservative there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["training_memory_bytes"]

BACKWARD_FACTOR = 3
"""Largest activations alive at once during backward, beyond the saved ones."""
LOSS_COPIES = 4
"""Logit-sized float32 tensors of the loss: softmax, one-hot target, products, gradient."""


def training_memory_bytes(model: str, model_kwargs: Mapping[str, Any], in_channels: int,
                          out_channels: int, patch: Sequence[int], batch: int) -> int:
    """Bytes one fp32 training step of ``model`` holds at its peak.

    Parameters
    ----------
    model : registry name (``medseg.models.create``), e.g. ``"unet3d"``.
    model_kwargs : its arguments (depth, width, pool, deep_supervision, ...).
    in_channels, out_channels : image channels C and classes K.
    patch : (x, y, z) voxels.
    batch : patches per step B.
    """
    import torch

    from medseg import models

    with torch.device("meta"):
        net = models.create(model, in_channels=in_channels, out_channels=out_channels,
                            **dict(model_kwargs))
    net.train()
    params = {id(p) for p in net.parameters()}
    saved: dict[int, int] = {}
    keep: list = []  # holds the saved tensors so their ids stay unique

    def pack(tensor):
        if id(tensor) not in params and tensor.device.type == "meta":
            saved[id(tensor)] = tensor.numel() * tensor.element_size()
            keep.append(tensor)
        return tensor

    x = torch.zeros((batch, in_channels, *patch), device="meta", requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    logits = sum(o.numel() for o in (out if isinstance(out, list) else [out]))
    n_params = sum(p.numel() for p in net.parameters())
    total = sum(saved.values()) + BACKWARD_FACTOR * max(saved.values(), default=0)
    total += 2 * 4 * n_params  # weights and gradients
    total += LOSS_COPIES * 4 * logits
    return int(total)
