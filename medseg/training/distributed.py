"""Distributed data parallel (DDP) process group for a torchrun job.

``torchrun --nproc_per_node N -m medseg train ...`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :class:`medseg.runtime.Runtime` reads them (once) and
:func:`init_distributed` starts the process group (NCCL on GPUs, gloo on the
CPU). Without them, training runs in one process and every helper here is a no-op.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from medseg.runtime import Runtime

__all__ = ["init_distributed", "barrier", "all_reduce_sum", "shutdown"]

log = logging.getLogger(__name__)


def init_distributed(runtime: Runtime) -> None:
    """Join the process group of ``runtime``'s torchrun job (if any); select its GPU."""
    if not runtime.distributed:
        return
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    if not dist.is_initialized():
        backend = "nccl" if runtime.device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("DDP: rank %d of %d (%s)", runtime.rank, runtime.world_size, backend)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (returned for chaining)."""
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()
