"""Step time: how long one optimiser step of a configured network takes, and the schedule
(epochs x iterations) that fits a time budget at that pace.

Used by ``medseg plan`` (:mod:`medseg.planning.plan` fits a training into
``--time-budget``) and by the demo (:mod:`medseg.demo` fits its training into
``minutes``). Seconds are wall-clock seconds on the runtime's device.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from medseg.errors import UsageError

if TYPE_CHECKING:
    from medseg.config import PipelineConfig
    from medseg.runtime import Runtime

__all__ = ["OVERHEAD", "measure_step_seconds", "plan_training"]

OVERHEAD = 1.2
"""Measured steps leave out patch sampling, augmentation, validation and checkpoints: a
training step costs this many measured steps."""


def measure_step_seconds(cfg: PipelineConfig, runtime: Runtime, steps: int = 3, warmup: int = 2
                         ) -> float:
    """Median wall seconds of one optimiser step of ``cfg``'s network under ``runtime``
    (:class:`medseg.runtime.Runtime`: its device and precision, as training will run).

    Random patches of ``train.patch_size`` and ``train.batch_size``; the first
    ``warmup`` steps (kernel selection, allocations) are left out, and they warm
    the process up for the training that follows. The global torch RNG state
    is restored afterwards. The network has one input channel and the phantoms'
    classes (:data:`medseg.data.phantom.LABEL_NAMES` and background) as outputs.

    Returns
    -------
    The median step time of the ``steps`` timed steps, in seconds.
    """
    import torch

    from medseg import losses, models
    from medseg.data.phantom import LABEL_NAMES
    from medseg.training.optim import make_optimizer

    dev = runtime.device
    rng_state = torch.get_rng_state()
    model = models.create(cfg.model.name, in_channels=1, out_channels=len(LABEL_NAMES) + 1,
                          **cfg.model.kwargs).to(dev)
    loss_fn = losses.create(cfg.loss.name, **cfg.loss.kwargs).to(dev)
    optimizer = make_optimizer(model.parameters(), cfg.train)
    t = cfg.train
    image = torch.randn(t.batch_size, 1, *t.patch_size, device=dev)
    label = torch.randint(0, len(LABEL_NAMES) + 1, (t.batch_size, *t.patch_size), device=dev)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss = loss_fn(model(image).float(), label)
        loss.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - start)
    torch.set_rng_state(rng_state)
    timed = sorted(times[warmup:])
    return float(timed[len(timed) // 2])


def plan_training(step_s: float, budget_s: float, epochs: int, iterations_per_epoch: int
                  ) -> tuple[int, int]:
    """(epochs, iterations_per_epoch) whose steps fit ``budget_s`` at ``step_s`` per step.

    Never more steps than ``epochs * iterations_per_epoch`` (the config's own
    schedule); at least one step. Epochs keep the config's length where possible.

    >>> plan_training(1.0, 120.0, 16, 25)   # 120 s / (1.0 s * 1.2 overhead) = 100 steps
    (4, 25)
    >>> plan_training(0.01, 600.0, 16, 25)  # the config's 400 steps fit
    (16, 25)
    """
    if step_s <= 0 or budget_s <= 0:
        raise UsageError(f"step time and budget must be positive, got {step_s} s and {budget_s} s")
    total = min(epochs * iterations_per_epoch, max(1, int(budget_s / (step_s * OVERHEAD))))
    if total < iterations_per_epoch:
        return 1, total
    n_epochs = total // iterations_per_epoch
    return n_epochs, total // n_epochs
