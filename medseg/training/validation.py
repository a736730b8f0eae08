"""Validation on whole cases: sliding-window inference and Dice per label.

Dice of label ``l`` in one case is ``2 |P_l & G_l| / (|P_l| + |G_l|)`` with
``P_l`` the voxels whose argmax is ``l``; it is NaN (left out of the means) when
the label is absent from both prediction and ground truth. The per-label value
is the mean over cases, and ``mean_dice`` the mean over labels. Computed on the
preprocessed grid (the grid the network sees).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from medseg.card import WindowSettings
from medseg.data.cache import CachedCase
from medseg.runtime import Runtime
from medseg.training.distributed import all_reduce_sum

__all__ = ["Collector", "PostprocessEvidence", "dice_per_label", "validate"]


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


Collector = Callable[[CachedCase, np.ndarray, np.ndarray], None]
"""Called with each validation case and its (x, y, z) predicted and true label maps."""


@torch.no_grad()
def validate(model: torch.nn.Module, cases: Sequence[CachedCase], window: WindowSettings,
             num_classes: int, runtime: Runtime, collect: Collector | None = None
             ) -> np.ndarray:
    """Mean Dice per label (K - 1,) over ``cases``, the cases shared out over the ranks.

    The sliding window runs with ``window``, the model card's settings (the same
    ``medseg predict`` uses), in ``runtime``'s precision. ``collect``, when given, sees
    every case this rank predicts (the post-processing choice of a run's last validation).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, num_classes - 1, dtype=torch.float64)  # [sum of Dice, count]
    for case in list(cases)[runtime.rank :: runtime.world_size]:
        pred = _predict(model, case, window, runtime)
        true = torch.from_numpy(np.array(case.label))
        dice = dice_per_label(pred, true, num_classes)
        if collect is not None:
            collect(case, pred.numpy(), true.numpy())
        valid = ~torch.isnan(dice)
        sums[0] += torch.where(valid, dice, torch.zeros_like(dice))
        sums[1] += valid.double()
    model.train(was_training)
    if runtime.distributed:
        sums = all_reduce_sum(sums.to(runtime.device), runtime).cpu()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums[0] / sums[1]).numpy()


class PostprocessEvidence:
    """The evidence for choosing post-processing, gathered during a run's last validation.

    A :data:`Collector`: for every validation case, the Dice of each label without and
    with keep-largest (:func:`~medseg.inference.postprocess_choice.postprocess_dice`) and its
    predicted components (:func:`~medseg.inference.postprocess_choice.case_components`, on
    the preprocessed grid, whose spacing in mm is the norm of each affine column).
    :meth:`choose` weighs them with nnU-Net's rule, as the out-of-fold evaluation of a
    cross-validation run does.
    """

    def __init__(self, labels: Sequence[int]) -> None:
        self.labels = [int(v) for v in labels]
        self.dice: list[dict] = []
        self.components: list[dict] = []

    def __call__(self, case: CachedCase, pred: np.ndarray, true: np.ndarray) -> None:
        from medseg.inference.postprocess_choice import case_components, postprocess_dice

        spacing_mm = np.linalg.norm(np.asarray(case.affine)[:3, :3], axis=0)
        self.dice.append(postprocess_dice(pred, true, self.labels))
        self.components.append(case_components(pred, true, self.labels, spacing_mm))

    def gather(self, runtime: Runtime) -> PostprocessEvidence:
        """Every rank's cases together (under DDP; this object unchanged otherwise)."""
        if runtime.distributed:
            import torch.distributed as dist

            parts: list = [None] * runtime.world_size
            dist.all_gather_object(parts, (self.dice, self.components))
            self.dice = [d for part in parts for d in part[0]]
            self.components = [c for part in parts for c in part[1]]
        return self

    def choose(self):
        """The :class:`~medseg.inference.postprocess_choice.PostprocessChoice` these cases
        support."""
        from medseg.inference.postprocess_choice import choose_postprocess

        return choose_postprocess(self.dice, self.components)
