"""Numeric precision of the network at inference: fp32, or autocast (AMP) per device.

``amp`` is a three-way switch, used by :func:`medseg.inference.predict.predict_case`
and ``medseg predict --amp/--no-amp``:

* ``None`` (default, "auto"): fp16 autocast on CUDA, as nnU-Net and MONAI users run
  inference on GPUs; plain fp32 on the CPU, so CPU results are the exact reference.
* ``True``: autocast everywhere: fp16 on CUDA, **bf16 on the CPU**. On CPUs with
  native bf16 (AVX-512 BF16 or AMX: Intel Sapphire Rapids and later, AMD Zen 4 and
  later) oneDNN runs 3D convolutions about 2x faster than fp32 (measured on a 2-core
  Sapphire Rapids VM: medseg unet3d 0.47x, deeplab3d 0.50x, MONAI UNet 0.4x the fp32
  forward time at 96^3). Elsewhere bf16 is emulated and slower than fp32, so medseg
  warns. The label maps differ from fp32 only where two classes are nearly tied.
* ``False``: fp32 everywhere (also on CUDA).

Logits always leave the predictor as float32, so stitching and softmax are fp32
whatever the network ran in.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["autocast_dtype", "cpu_has_native_bf16", "make_predictor"]

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for ``device`` under ``amp`` (module docstring); None means fp32."""
    if amp is None:
        return torch.float16 if device.type == "cuda" else None
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        if not cpu_has_native_bf16():
            log.warning("--amp on a CPU without native bf16 (AVX-512 BF16 / AMX): bf16 is "
                        "emulated and will be slower than fp32; drop --amp on this machine")
        return torch.bfloat16
    log.warning("--amp is not supported on %s; running in fp32", device.type)
    return None


def make_predictor(model: nn.Module, device: torch.device, amp: bool | None = None
                   ) -> Predictor:
    """Window batch (B, C, x, y, z) -> float32 logits (B, K, x, y, z), under the ``amp`` policy."""
    dtype = autocast_dtype(device, amp)
    log.debug("network runs in %s on %s", "fp32" if dtype is None else dtype, device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return model(batch).float()
        with torch.autocast(device_type=device.type, dtype=dtype):
            return model(batch).float()

    return run
