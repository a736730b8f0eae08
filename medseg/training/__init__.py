"""Training: patch sampling, optimisation, validation, checkpoints, resume, DDP.

* :func:`train` / :class:`TrainOptions` / :class:`TrainResult` -- :mod:`.loop`;
* :mod:`.optim` -- optimiser and per-iteration LR schedule;
* :mod:`.validation` -- sliding-window validation, Dice per label;
* :mod:`.data` -- phantom generation, manifest split and preprocessing cache;
* :mod:`.distributed` -- torchrun / DDP set-up;
* :mod:`.logs` -- CSV, TensorBoard, curves PNG.
"""

from medseg.training.loop import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
