"""Training: patch sampling, optimisation, validation, checkpoints, resume, DDP.

* :func:`train` / :class:`TrainOptions` / :class:`TrainResult` -- :mod:`.loop`;
* :mod:`.optim` -- optimiser and per-iteration LR schedule;
* :mod:`.validation` -- sliding-window validation, Dice per label;
* :mod:`.data` -- phantom generation, manifest split and preprocessing cache;
* :mod:`.distributed` -- torchrun / DDP set-up;
* :mod:`.logs` -- CSV, TensorBoard, curves PNG;
* :func:`train_folds` -- k-fold cross-validation runs (:mod:`.folds`);
* :func:`evaluate_cv` -- out-of-fold evaluation and post-processing choice (:mod:`.crossval`).
"""

from medseg.training.crossval import evaluate_cv
from medseg.training.folds import train_folds
from medseg.training.loop import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "evaluate_cv", "train", "train_folds"]
