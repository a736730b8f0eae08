"""Optimiser and per-iteration learning-rate schedule.

``poly``: lr(t) = lr * (1 - t / T) ** exponent (nnU-Net's 0.9); ``cosine``:
lr(t) = lr * (1 + cos(pi t / T)) / 2; ``constant``. ``t`` counts optimiser steps
from 0 and ``T = epochs * iterations_per_epoch``, recomputed from the config at
each start, so a resumed run with more epochs stretches the remaining decay. An
optional linear warm-up over the first ``warmup_iterations`` steps multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from medseg.config import TrainConfig

__all__ = ["make_optimizer", "lr_at", "set_lr"]


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, from the ``train`` section."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Learning rate of optimiser step ``step`` (0-based).

    ``time_fraction``: the share of a wall-clock budget (``train.max_minutes``) already
    spent. The schedule's progress is the larger of the steps' share and this, so a machine
    slower than planned still ends its budget at the schedule's end (a decayed rate); on a
    machine as fast as planned the steps lead and the rates (hence the weights) are the
    same as without a budget. With ``cfg.fill_budget`` the progress is the budget's share
    alone (the run goes on past ``epochs`` while the budget allows).
    """
    total = max(cfg.epochs * cfg.iterations_per_epoch, 1)
    t = min(max(step, 0), total) / total
    if time_fraction is not None:
        t = min(float(time_fraction) if cfg.fill_budget else max(t, float(time_fraction)), 1.0)
    if cfg.schedule == "poly":
        factor = (1.0 - t) ** cfg.poly_exponent
    elif cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        factor = 1.0
    if cfg.warmup_iterations > 0 and step < cfg.warmup_iterations:
        factor *= (step + 1) / cfg.warmup_iterations
    return cfg.lr * factor


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
