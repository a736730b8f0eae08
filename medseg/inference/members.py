"""The members of one prediction, run one by one so that their agreement can be measured.

Quality control and uncertainty (:mod:`medseg.inference.qc`) need more than the blended
output: they need each *member*'s opinion. The members are

* the networks of an ensemble (medseg folds, nnU-Net folds), each with the window's
  mirroring as usual;
* for one network with test-time mirroring (``--tta``), the mirrorings: each flip set of the
  window's ``mirror_axes`` is a member (the same network calls as the mirrored pass of a
  plain prediction: QC reuses them);
* for one network without mirroring, the plain pass and one pass mirrored along every
  mirror axis of the card (all three when it has none): twice the network time. The
  prediction is the plain pass alone, exactly as without QC.

:func:`run_members` blends each member's whole sliding window and keeps, on the network
grid, what the prediction needs (the members combined as the model's ``combine`` rule
says: the mean of the mirrorings' or of nnU-Net folds' logits, or the mean of medseg folds'
softmax), the members' mean calibrated probabilities, and the sum of the members'
entropies; never all members at once. The combined output equals the plain prediction's
to float rounding (the mean of per-member blends instead of the blend of per-window means;
exactly for nnU-Net folds and for one network without mirroring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from medseg.card import WindowSettings
from medseg.inference.precision import Predictor

__all__ = ["MemberRun", "Temperatures", "label_temperature", "run_members"]

ALL_AXES = (0, 1, 2)


@dataclass
class MemberRun:
    """What :func:`run_members` kept, on the network grid (x', y', z').

    Attributes
    ----------
    combined : (K, x', y', z') the members combined as the prediction uses them: logits
        when ``is_logits``, else probabilities; before the temperature either way (the
        prediction calibrates them on the input grid).
    is_logits : whether ``combined`` holds logits.
    mean_probabilities : (K, x', y', z') float32, the mean over members of their calibrated
        softmax.
    member_entropy : (x', y', z') float32, the mean over members of the entropy (nats) of
        their calibrated softmax.
    members : how many members there were; ``kind``: ``"mirrors"`` or ``"networks"``.
    """

    combined: torch.Tensor
    is_logits: bool
    mean_probabilities: torch.Tensor
    member_entropy: torch.Tensor
    members: int
    kind: str


#: The temperature(s) of a prediction: one T, or one per channel applied by the voxel's
#: predicted label (:meth:`medseg.confidence.Confidence.temperatures`).
Temperatures = float | Sequence[float]


def label_temperature(values: torch.Tensor, temperatures: Temperatures
                      ) -> float | torch.Tensor:
    """What to divide (K, ...) logits or log-probabilities by: the one T, or (1, ...) the T of
    each voxel's predicted label (:func:`medseg.confidence.label_scaled`, in torch)."""
    if isinstance(temperatures, (int, float)):
        return float(temperatures)
    t = torch.as_tensor(temperatures, dtype=values.dtype, device=values.device)
    return t[values.argmax(dim=0)].unsqueeze(0)


def _mirrored(predictor: Predictor, axes: Sequence[int]) -> Predictor:
    """``predictor`` on the batch mirrored along spatial ``axes``, mirrored back."""
    dims = [2 + a for a in axes]

    def run(batch: torch.Tensor) -> torch.Tensor:
        return predictor(batch.flip(dims)).flip(dims)

    return run


def _members(predictors: Sequence[Predictor], window: WindowSettings
             ) -> tuple[list[tuple[Predictor, WindowSettings]], str, int]:
    """The members' (predictor, window settings), their kind and the index of the member
    that alone is the prediction (-1: all of them combined; see the module docstring);
    ``predictors``: one per network, on the backend the prediction runs on."""
    if len(predictors) > 1:
        return [(p, window) for p in predictors], "networks", -1
    plain = predictors[0]
    flat = replace(window, mirror_axes=())
    if window.mirror_axes:
        from medseg.inference.windows import arithmetic_for

        flips = arithmetic_for(window.blend, window.mirror_axes).flips
        return [(_mirrored(plain, f) if f else plain, flat) for f in flips], "mirrors", -1
    return [(plain, flat), (_mirrored(plain, ALL_AXES), flat)], "mirrors", 0


def run_members(predictors: Sequence[Predictor], combine: str, image: torch.Tensor,
                window: WindowSettings, temperature: Temperatures,
                window_kwargs: dict[str, Any]) -> MemberRun:
    """Run every member's sliding window over ``image`` (1, C, x', y', z') and keep what
    QC and the prediction need (:class:`MemberRun`).

    ``predictors``: each network's logits predictor, on the backend the prediction runs on
    (:func:`medseg.inference.backends.member_predictors`). ``combine`` is the model's
    ensemble rule (``"mean_softmax"``: the members' softmax are averaged, as the plain
    prediction does; anything else, and the mirrorings of one network: their logits).
    ``window_kwargs`` are :func:`~medseg.inference.sliding_window.sliding_window`'s keyword
    options (device, out_device, progress).
    """
    from medseg.inference.sliding_window import sliding_window

    members, kind, alone = _members(predictors, window)
    mean_softmax = kind == "networks" and combine == "mean_softmax"
    total: torch.Tensor | None = None
    probs = torch.zeros(0)
    entropy = torch.zeros(0)
    for i, (predictor, settings) in enumerate(members):
        out = sliding_window(predictor, image, settings, **window_kwargs)[0]
        logits = out.float()
        logp = torch.log_softmax(logits / label_temperature(logits, temperature), dim=0)
        del logits
        p = logp.exp()
        h = -(p * logp).sum(dim=0)
        entropy = h if i == 0 else entropy.add_(h)
        del logp, h
        if alone in (-1, i):
            part = torch.softmax(out.float(), dim=0) if mean_softmax else out
            total = part.clone() if total is None else total.add_(part)
        probs = p if i == 0 else probs.add_(p)
        del out
    n = len(members)
    if total is None:
        raise RuntimeError("run_members: no member ran")  # unreachable: n >= 1
    if alone == -1 and n > 1:
        total.div_(n)
    return MemberRun(total, not mean_softmax, probs.div_(n), entropy.div_(n), n, kind)


def normalised(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Entropies (nats) divided by their largest value, log K (0..1)."""
    return values.div(math.log(num_classes)) if num_classes > 1 else values.mul(0.0)
