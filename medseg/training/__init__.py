"""Training: patch sampling, optimisation, validation, checkpoints, resume, DDP.

* :func:`train` / :class:`TrainOptions` / :class:`TrainResult` -- :mod:`.loop`;
* :mod:`.optim` -- optimiser and per-iteration LR schedule;
* :mod:`.validation` -- sliding-window validation, Dice per label;
* :mod:`.data` -- phantom generation, manifest split and preprocessing cache;
* :mod:`.distributed` -- torchrun / DDP set-up;
* :mod:`.logs` -- CSV, TensorBoard, curves PNG;
* :func:`train_folds` -- k-fold cross-validation runs (:mod:`.folds`; their out-of-fold
  evaluation is :func:`medseg.crossval.evaluate_cv`);
* :mod:`.screening` -- ``train.select``: candidates screened on one split within the time
  budget, the better continued (:func:`train` does it for a config that asks).
"""

from medseg.training.folds import train_folds
from medseg.training.loop import TrainOptions, TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train", "train_folds"]
