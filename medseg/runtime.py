"""Where and how networks run: device, precision, and this process's place in a torchrun job.

A :class:`Runtime` is resolved once per command, from the CLI (``--device``,
``--amp/--no-amp``), the config (``train.amp``) and the torchrun environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and handed to training, prediction,
the demo and batch prediction alike.

Devices: ``"auto"`` (or None) is CUDA when available, else the CPU; ``"cpu"``;
``"cuda"``; ``"cuda:N"``. Under torchrun on GPUs, ``auto``/``cuda`` mean
``cuda:LOCAL_RANK``.

Mixed precision, the one policy (``amp`` is the switch of ``--amp/--no-amp``
and ``train.amp``):

============  ================================================  =====================
``amp``       CUDA                                              CPU
============  ================================================  =====================
None (auto)   bf16 where the GPU supports it, else fp16         fp32 (exact)
True          bf16 where the GPU supports it, else fp16         bf16 [#]_
False         fp32                                              fp32
============  ================================================  =====================

.. [#] On CPUs with native bf16 (AVX-512 BF16 or AMX: Intel Sapphire Rapids and
   later, AMD Zen 4 and later) oneDNN runs 3D convolutions about 2x faster than
   fp32 (medseg unet3d 0.47x, deeplab3d 0.50x the fp32 forward time at 96^3 on a
   2-core Sapphire Rapids VM); elsewhere bf16 is emulated and slower, and medseg
   warns.

bf16 is preferred on GPUs because it has fp32's range: training needs no
gradient scaler (fp16 training uses one). Networks return float32 logits at
inference whatever they ran in, so blending and softmax are fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Mapping

import torch

from medseg.errors import UsageError

__all__ = ["PRECISIONS", "Runtime", "cpu_has_native_bf16", "torchrun_env"]

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def torchrun_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) outside torchrun.

    Raises UsageError for values that are not integers or do not fit together.
    """
    env = os.environ if environ is None else environ
    try:
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise UsageError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                         f"LOCAL_RANK={local}")
    return rank, world, local


def _device(name: str | torch.device | None, world: int, local_rank: int) -> torch.device:
    """The device ``name`` means for this process (module docstring)."""
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {str(name)!r} requested but CUDA is not available; "
                             "use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else 0)
    return device


def _precision(device: torch.device, amp: bool | None) -> str:
    """The policy table of the module docstring."""
    if amp is False:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp is None:
        return "fp32"
    if not cpu_has_native_bf16():
        log.warning("--amp on a CPU without native bf16 (AVX-512 BF16 / AMX): bf16 is "
                    "emulated and will be slower than fp32; drop --amp on this machine")
    return "bf16"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Device, precision and place in the job of this process (see the module docstring).

    Attributes
    ----------
    device : where networks run.
    precision : ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast dtype of the network).
    rank, world_size : this process's rank among ``world_size`` torchrun processes.
    local_rank : rank on this node (the GPU index under torchrun).
    """

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def resolve(cls, device: str | torch.device | None = "auto", amp: bool | None = None,
                environ: Mapping[str, str] | None = None) -> Runtime:
        """Resolve ``device`` (auto, cpu, cuda, cuda:N), the ``amp`` policy and torchrun's
        environment (``environ``; default ``os.environ``) once."""
        rank, world, local = torchrun_env(environ)
        resolved = _device(device, world, local)
        return cls(resolved, _precision(resolved, amp), rank, world, local)

    @classmethod
    def cpu(cls) -> Runtime:
        """Exact fp32 on the CPU, one process (tests, tools)."""
        return cls(torch.device("cpu"))

    def with_amp(self, amp: bool | None) -> Runtime:
        """This runtime with the precision the ``amp`` policy gives on its device (a
        config's own ``train.amp``: :mod:`medseg.training.screening`'s candidates)."""
        return dataclasses.replace(self, precision=_precision(self.device, amp))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        return PRECISIONS[self.precision]

    @property
    def distributed(self) -> bool:
        """True inside a torchrun job of several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes checkpoints, logs and plots."""
        return self.rank == 0

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the enclosed network calls in :attr:`precision` on :attr:`device`."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def __str__(self) -> str:
        job = f", rank {self.rank}/{self.world_size}" if self.distributed else ""
        return f"{self.device} ({self.precision}{job})"
