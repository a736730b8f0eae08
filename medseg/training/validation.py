"""Validation on whole cases: sliding-window inference and Dice per label.

Dice of label ``l`` in one case is ``2 |P_l & G_l| / (|P_l| + |G_l|)`` with
``P_l`` the voxels whose argmax is ``l``; it is NaN (left out of the means) when
the label is absent from both prediction and ground truth. The per-label value
is the mean over cases, and ``mean_dice`` the mean over labels. Computed on the
preprocessed grid (the grid the network sees).
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch

from medseg.card import WindowSettings
from medseg.data.cache import CachedCase
from medseg.runtime import Runtime
from medseg.training.distributed import all_reduce_sum

__all__ = ["dice_per_label", "validate"]


def dice_per_label(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice of labels 1..K-1 from integer maps of equal shape; NaN where both are empty.

    Returns a float64 tensor of shape (K - 1,).
    """
    k = int(num_classes)
    pair = pred.reshape(-1).long() * k + target.reshape(-1).long()
    confusion = torch.bincount(pair, minlength=k * k).reshape(k, k).double()  # [pred, true]
    inter = confusion.diagonal()[1:]
    total = confusion.sum(dim=1)[1:] + confusion.sum(dim=0)[1:]
    dice = 2.0 * inter / total
    return torch.where(total > 0, dice, torch.full_like(dice, float("nan")))


def _predict(model: torch.nn.Module, case: CachedCase, window: WindowSettings,
             runtime: Runtime) -> torch.Tensor:
    from medseg.inference import sliding_window
    from medseg.inference.precision import make_predictor

    image = torch.from_numpy(np.array(case.image, dtype=np.float32))[None]  # a writable copy
    logits = sliding_window(make_predictor(model, runtime), image, window,
                            device=runtime.device, out_device="cpu")
    return logits[0].argmax(dim=0)


@torch.no_grad()
def validate(model: torch.nn.Module, cases: Sequence[CachedCase], window: WindowSettings,
             num_classes: int, runtime: Runtime) -> np.ndarray:
    """Mean Dice per label (K - 1,) over ``cases``, the cases shared out over the ranks.

    The sliding window runs with ``window``, the model card's settings (the same
    ``medseg predict`` uses), in ``runtime``'s precision.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, num_classes - 1, dtype=torch.float64)  # [sum of Dice, count]
    for case in list(cases)[runtime.rank :: runtime.world_size]:
        pred = _predict(model, case, window, runtime)
        dice = dice_per_label(pred, torch.from_numpy(np.array(case.label)), num_classes)
        valid = ~torch.isnan(dice)
        sums[0] += torch.where(valid, dice, torch.zeros_like(dice))
        sums[1] += valid.double()
    model.train(was_training)
    if runtime.distributed:
        sums = all_reduce_sum(sums.to(runtime.device), runtime).cpu()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[0] / sums[1]).numpy()
