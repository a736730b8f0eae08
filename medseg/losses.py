"""Segmentation losses: ``create(name, **kwargs)``; ``ce``, ``wce``, ``bce``, ``dice``, ``dice_ce``.

Every loss is called as ``loss(logits, target)`` with logits (B, K, x, y, z)
(unnormalised, K classes with 0 = background) and an integer target
(B, x, y, z) with values in 0..K-1 (or ``ignore_index``) and returns a scalar.

Definitions, for valid voxels v (target != ``ignore_index``), N of them,
p_v = softmax(logits)_v and ce_v = -log p_{v, y_v}:

* ``ce``: mean cross-entropy; with class ``weight`` w it is the weighted mean
  sum_v w_{y_v} ce_v / sum_v w_{y_v} (identical to ``torch.nn.CrossEntropyLoss``).
* ``wce`` (weighted CE): (1 / N) sum_v a_{y_v} ce_v with a_0 = 1 (background)
  and a_c = ``beta`` for every foreground class c = 1..K-1. ``beta=1`` is ``ce``.
* ``bce`` (balanced CE, as in HED): (1 / N) sum_v a_{y_v} ce_v with
  a_0 = 1 - ``beta`` and a_c = ``beta`` for c = 1..K-1 (all foreground classes
  share ``beta``). ``beta=None`` (default) uses, per batch, the fraction of
  background voxels among the valid ones, so rare foreground weighs more.
  For ``wce`` and ``bce`` a class ``weight`` multiplies a_c.
* ``dice`` (soft Dice): per sample b and class c,
  1 - (2 sum_v p_vc g_vc + smooth_nr) / (sum_v p_vc + sum_v g_vc + smooth_dr),
  g the one-hot target, times ``weight[c]`` if given, averaged over b and c
  (``batch=True`` sums over the batch first; ``include_background=False``
  drops class 0). Defaults equal MONAI ``DiceLoss(to_onehot_y=True,
  softmax=True, smooth_nr=1, smooth_dr=1)``.
* ``dice_ce``: ``lambda_dice * dice + lambda_ce * ce``; defaults equal MONAI
  ``DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=1, smooth_dr=1)``.

Ignored voxels count in neither the cross-entropy nor the Dice sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import UsageError, check_keywords, check_option

__all__ = ["create", "available", "CrossEntropy", "ForegroundWeightedCE", "SoftDice", "DiceCE"]

Weight = Sequence[float] | torch.Tensor | None


def _non_negative(value: Any, name: str) -> float:
    """``value`` as a float if it is a number >= 0 (not a bool), else UsageError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UsageError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _check_weight(weight: Weight) -> torch.Tensor | None:
    if weight is None:
        return None
    try:
        tensor = torch.as_tensor(weight, dtype=torch.float32).flatten()
    except (TypeError, ValueError):
        raise UsageError(
            f"weight must be one non-negative number per class, got {weight!r}"
        ) from None
    if tensor.numel() == 0 or bool((tensor < 0).any()) or not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"weight must be one non-negative number per class, got {weight!r}")
    return tensor


def _check_ignore(ignore_index: int | None) -> int | None:
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, int)
    ):
        raise UsageError(f"ignore_index must be an int or None, got {ignore_index!r}")
    return ignore_index


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise UsageError(
            f"logits must be (B, K, x, y, z) with K >= 2, got shape {tuple(logits.shape)}"
        )
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise UsageError(
            f"target must be (B, x, y, z) = {tuple(logits.shape[:1] + logits.shape[2:])} to match "
            f"logits {tuple(logits.shape)}, got shape {tuple(target.shape)}"
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise UsageError(f"target must hold integer labels, got dtype {target.dtype}")
    if weight is not None and weight.numel() != logits.shape[1]:
        raise UsageError(
            f"weight has {weight.numel()} values but the logits have K = {logits.shape[1]} classes"
        )


def _valid(
    target: torch.Tensor, ignore_index: int | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels with ignored voxels set to 0, int64; valid mask (B, x, y, z) of ``dtype``)."""
    target = target.long()
    if ignore_index is None:
        return target, torch.ones(target.shape, dtype=dtype, device=target.device)
    valid = target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)), valid.to(dtype)


class CrossEntropy(nn.Module):
    """Mean (class-weighted) cross-entropy, equal to ``torch.nn.CrossEntropyLoss``."""

    def __init__(self, weight: Weight = None, ignore_index: int | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", _check_weight(weight), persistent=False)
        self.ignore_index = _check_ignore(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K, x, y, z), target (B, x, y, z) int -> scalar."""
        _check_inputs(logits, target, self.weight)
        labels, valid = _valid(target, self.ignore_index, logits.dtype)
        ce = F.cross_entropy(logits, labels, reduction="none")
        w = valid if self.weight is None else self.weight.to(logits)[labels] * valid
        return (w * ce).sum() / w.sum().clamp_min(torch.finfo(ce.dtype).tiny)


class ForegroundWeightedCE(nn.Module):
    """Cross-entropy with one weight for background and one for all foreground classes.

    ``balanced=False`` (``wce``): background 1, foreground ``beta``.
    ``balanced=True`` (``bce``): background ``1 - beta``, foreground ``beta``;
    ``beta=None`` takes the batch's background fraction among valid voxels.
    The weighted sum is divided by the number of valid voxels (module docstring).
    """

    def __init__(
        self,
        beta: float | None = 1.0,
        balanced: bool = False,
        weight: Weight = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if beta is None and not balanced:
            raise UsageError("wce needs a number for beta (the foreground weight), got None")
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
                raise UsageError(f"beta must be a number >= 0, got {beta!r}")
            if balanced and beta > 1:
                raise UsageError(
                    f"bce beta must lie in [0, 1] (background gets 1 - beta), got {beta!r}"
                )
        self.beta = None if beta is None else float(beta)
        self.balanced = balanced
        self.register_buffer("weight", _check_weight(weight), persistent=False)
        self.ignore_index = _check_ignore(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K, x, y, z), target (B, x, y, z) int -> scalar."""
        _check_inputs(logits, target, self.weight)
        labels, valid = _valid(target, self.ignore_index, logits.dtype)
        n = valid.sum().clamp_min(1.0)
        if self.beta is None:
            beta = ((labels == 0).float() * valid).sum() / n
        else:
            beta = torch.tensor(self.beta, dtype=logits.dtype, device=logits.device)
        background = 1 - beta if self.balanced else torch.ones_like(beta)
        foreground = beta.expand(logits.shape[1] - 1)
        class_w = torch.cat([background.reshape(1), foreground]).to(logits)
        if self.weight is not None:
            class_w = class_w * self.weight.to(logits)
        ce = F.cross_entropy(logits, labels, reduction="none")
        return (class_w[labels] * valid * ce).sum() / n


class SoftDice(nn.Module):
    """Soft Dice loss of softmax probabilities against the one-hot target (module docstring)."""

    def __init__(
        self,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        include_background: bool = True,
        batch: bool = False,
        weight: Weight = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.smooth_nr = _non_negative(smooth_nr, "smooth_nr")
        self.smooth_dr = _non_negative(smooth_dr, "smooth_dr")
        self.include_background = bool(include_background)
        self.batch = bool(batch)
        self.register_buffer("weight", _check_weight(weight), persistent=False)
        self.ignore_index = _check_ignore(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K, x, y, z), target (B, x, y, z) int -> scalar."""
        weight = self.weight
        k = logits.shape[1]
        if weight is not None and not self.include_background and weight.numel() == k - 1:
            weight = torch.cat([weight.new_ones(1), weight])  # MONAI style: no background weight
        _check_inputs(logits, target, weight)
        labels, valid = _valid(target, self.ignore_index, logits.dtype)
        mask = valid.unsqueeze(1).to(logits)
        probs = torch.softmax(logits, dim=1) * mask
        onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(logits) * mask
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
            weight = None if weight is None else weight[1:]
        dims = [0, *range(2, logits.ndim)] if self.batch else list(range(2, logits.ndim))
        intersection = (probs * onehot).sum(dims)
        total = probs.sum(dims) + onehot.sum(dims)
        loss = 1 - (2 * intersection + self.smooth_nr) / (total + self.smooth_dr)
        if weight is not None:
            loss = loss * weight.to(loss)
        return loss.mean()


class DiceCE(nn.Module):
    """``lambda_dice * dice + lambda_ce * CrossEntropy``, the cross-entropy with Dice's options.

    Parameters
    ----------
    dice : the soft Dice term (default ``SoftDice()``); its class ``weight`` and
        ``ignore_index`` are also those of the cross-entropy.
    lambda_dice, lambda_ce : multipliers (>= 0) of the Dice and cross-entropy terms.

    ``create("dice_ce", **options)`` takes the Dice options by name (:class:`SoftDice`).
    """

    def __init__(
        self, dice: SoftDice | None = None, lambda_dice: float = 1.0, lambda_ce: float = 1.0
    ) -> None:
        super().__init__()
        self.lambda_dice = _non_negative(lambda_dice, "lambda_dice")
        self.lambda_ce = _non_negative(lambda_ce, "lambda_ce")
        self.dice = SoftDice() if dice is None else dice
        self.ce = CrossEntropy(self.dice.weight, self.dice.ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (B, K, x, y, z), target (B, x, y, z) int -> scalar."""
        dice = self.dice(logits, target)
        return self.lambda_dice * dice + self.lambda_ce * self.ce(logits, target)


def _dice_ce(lambda_dice: float = 1.0, lambda_ce: float = 1.0, **dice_options: Any) -> nn.Module:
    return DiceCE(SoftDice(**dice_options), lambda_dice, lambda_ce)


def _wce(**kwargs: Any) -> nn.Module:
    return ForegroundWeightedCE(balanced=False, **kwargs)


def _bce(**kwargs: Any) -> nn.Module:
    kwargs.setdefault("beta", None)
    return ForegroundWeightedCE(balanced=True, **kwargs)


#: Options of :class:`SoftDice`, by name (also those of ``dice_ce`` besides the lambdas).
_DICE_OPTIONS = ("smooth_nr", "smooth_dr", "include_background", "batch", "weight", "ignore_index")
_REGISTRY = {
    "ce": (CrossEntropy, ("weight", "ignore_index")),
    "wce": (_wce, ("beta", "weight", "ignore_index")),
    "bce": (_bce, ("beta", "weight", "ignore_index")),
    "dice": (SoftDice, _DICE_OPTIONS),
    "dice_ce": (_dice_ce, ("lambda_dice", "lambda_ce", *_DICE_OPTIONS)),
}


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss ``name`` (see the module docstring for definitions and options).

    Raises
    ------
    UsageError
        Unknown name or option (naming the closest valid one), or a bad value.
    """
    check_option(name, _REGISTRY, "loss")
    factory, options = _REGISTRY[name]
    check_keywords(kwargs, options, f"loss {name!r}")
    loss = factory(**kwargs)
    loss.medseg_config = {"name": name, **{k: _jsonable(v) for k, v in kwargs.items()}}
    return loss


def _jsonable(value: Any) -> Any:
    return value.tolist() if isinstance(value, torch.Tensor) else value
