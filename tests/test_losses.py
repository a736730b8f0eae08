"""Losses against hand-computed values on tiny tensors and against torch / MONAI on random ones."""

import math

import pytest
import torch

from medseg import losses
from medseg.errors import UsageError

monai_losses = pytest.importorskip("monai.losses")


def _tiny():
    """B=1, K=2, three voxels (shape (1, 2, 3, 1, 1)), labels 0, 1, 1."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]], dtype=torch.float64).T
    logits = logits.reshape(1, 2, 3, 1, 1).double()
    target = torch.tensor([0, 1, 1]).reshape(1, 3, 1, 1)
    # p(class 1) per voxel: 1/2, 1/4, 3/4
    return logits, target


def _random(seed=0, shape=(2, 4, 5, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
    return logits, target


def test_available():
    assert losses.available() == ["ce", "wce", "bce", "dice", "dice_ce"]


def test_ce_by_hand():
    logits, target = _tiny()
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.75)) / 3
    assert losses.create("ce")(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_wce_by_hand():
    logits, target = _tiny()
    expected = -(math.log(0.5) + 3 * math.log(0.25) + 3 * math.log(0.75)) / 3
    assert losses.create("wce", beta=3.0)(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_bce_by_hand_fixed_and_auto_beta():
    logits, target = _tiny()
    fixed = -(0.2 * math.log(0.5) + 0.8 * math.log(0.25) + 0.8 * math.log(0.75)) / 3
    assert losses.create("bce", beta=0.8)(logits, target).item() == pytest.approx(fixed, abs=1e-12)
    # auto: beta = background fraction = 1/3
    auto = -((2 / 3) * math.log(0.5) + (1 / 3) * math.log(0.25) + (1 / 3) * math.log(0.75)) / 3
    assert losses.create("bce")(logits, target).item() == pytest.approx(auto, abs=1e-12)


def test_dice_by_hand():
    logits, target = _tiny()
    # class 0: p = 1/2, 3/4, 1/4; g = 1, 0, 0 -> I = 1/2, sum p = 3/2, sum g = 1
    # class 1: p = 1/2, 1/4, 3/4; g = 0, 1, 1 -> I = 1, sum p = 3/2, sum g = 2
    d0 = 1 - (2 * 0.5 + 1) / (1.5 + 1 + 1)
    d1 = 1 - (2 * 1.0 + 1) / (1.5 + 2 + 1)
    assert losses.create("dice")(logits, target).item() == pytest.approx((d0 + d1) / 2, abs=1e-12)
    no_bg = losses.create("dice", include_background=False)(logits, target).item()
    assert no_bg == pytest.approx(d1, abs=1e-12)


def test_ignore_index_by_hand():
    logits, target = _tiny()
    target = target.clone()
    target[0, 1] = 255  # the voxel with p1 = 1/4 is ignored
    ce = -(math.log(0.5) + math.log(0.75)) / 2
    assert losses.create("ce", ignore_index=255)(logits, target).item() == pytest.approx(ce)
    d0 = 1 - (2 * 0.5 + 1) / (0.5 + 0.25 + 1 + 1)
    d1 = 1 - (2 * 0.75 + 1) / (0.5 + 0.75 + 1 + 1)
    dice = losses.create("dice", ignore_index=255)(logits, target).item()
    assert dice == pytest.approx((d0 + d1) / 2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_ce_matches_torch(seed):
    logits, target = _random(seed)
    weight = [0.5, 1.0, 2.0, 3.0]
    target[0, 0] = -1
    ref = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight).double(), ignore_index=-1)
    ours = losses.create("ce", weight=weight, ignore_index=-1)(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target).item(), abs=1e-6)
    plain = losses.create("ce")(logits, target.clamp_min(0))
    ref = torch.nn.functional.cross_entropy(logits, target.clamp_min(0))
    assert plain.item() == pytest.approx(ref.item(), abs=1e-6)


def test_wce_and_bce_match_torch_sum():
    logits, target = _random(2)
    n = target.numel()
    ce_sum = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.5, 2.5, 2.5]).double(),
                                       reduction="sum")(logits, target)
    assert losses.create("wce", beta=2.5)(logits, target).item() == pytest.approx(
        ce_sum.item() / n, abs=1e-6)
    ce_sum = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.1, 0.9, 0.9, 0.9]).double(),
                                       reduction="sum")(logits, target)
    assert losses.create("bce", beta=0.9)(logits, target).item() == pytest.approx(
        ce_sum.item() / n, abs=1e-6)
    assert losses.create("wce", beta=1.0)(logits, target).item() == pytest.approx(
        losses.create("ce")(logits, target).item(), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_monai(seed):
    logits, target = _random(seed)
    ref = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, smooth_nr=1, smooth_dr=1)
    ours = losses.create("dice")(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), abs=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"include_background": False},
        {"batch": True},
        {"weight": [0.2, 1.0, 2.0, 0.5]},
        {"smooth_nr": 0.0, "smooth_dr": 1e-5},
        {"ignore_index": 7},
    ],
)
def test_dice_options_match_monai(options):
    logits, target = _random(3)
    target[1, :2] = 7
    if "ignore_index" not in options:
        target = target % 4
    ref = monai_losses.DiceLoss(to_onehot_y=True, softmax=True, smooth_nr=options.get("smooth_nr", 1),
                                smooth_dr=options.get("smooth_dr", 1),
                                include_background=options.get("include_background", True),
                                batch=options.get("batch", False), weight=options.get("weight"),
                                ignore_index=options.get("ignore_index"))
    ours = losses.create("dice", **options)(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_dice_ce_matches_monai(seed):
    logits, target = _random(seed)
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=1, smooth_dr=1)
    ours = losses.create("dice_ce")(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), abs=1e-6)
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, smooth_nr=1, smooth_dr=1,
                                  lambda_dice=0.3, lambda_ce=2.0)
    ours = losses.create("dice_ce", lambda_dice=0.3, lambda_ce=2.0)(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), abs=1e-6)


def test_losses_have_gradients():
    logits, target = _random(4)
    for name in losses.available():
        x = logits.clone().requires_grad_(True)
        losses.create(name)(x, target).backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_bad_name_and_options_suggest_closest():
    with pytest.raises(UsageError, match="did you mean 'dice_ce'"):
        losses.create("dicece")
    with pytest.raises(UsageError, match="did you mean 'ignore_index'"):
        losses.create("ce", ignore_idx=3)
    with pytest.raises(UsageError, match="beta"):
        losses.create("bce", beta=1.5)
    with pytest.raises(UsageError, match="weight"):
        losses.create("ce", weight=[1.0, -1.0])


def test_bad_inputs_name_what_arrived():
    logits, target = _random(0)
    with pytest.raises(UsageError, match=r"target must be \(B, x, y, z\)"):
        losses.create("dice")(logits, target[:, :3])
    with pytest.raises(UsageError, match="integer"):
        losses.create("ce")(logits, target.double())
    with pytest.raises(UsageError, match="weight has 2 values"):
        losses.create("dice_ce", weight=[1.0, 2.0])(logits, target)


def test_dice_ce_passes_dice_options_to_both_terms_as_monai():
    logits, target = _random(2)
    target[0, 0] = 255  # ignored voxels
    options = dict(smooth_nr=0.0, smooth_dr=1e-5, include_background=False, batch=True)
    ours = losses.create("dice_ce", lambda_dice=0.5, lambda_ce=1.5, ignore_index=255, **options)
    assert ours.medseg_config == {"name": "dice_ce", "lambda_dice": 0.5, "lambda_ce": 1.5,
                                  "ignore_index": 255, **options}
    # the same loss built from its two terms by hand
    dice = losses.create("dice", ignore_index=255, **options)(logits, target)
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    expected = 0.5 * dice.item() + 1.5 * ce.item()
    assert ours(logits, target).item() == pytest.approx(expected, abs=1e-12)
    # without ignored voxels: MONAI DiceCELoss with the same Dice options
    logits, target = _random(3)
    ref = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=1.5,
                                  **options)
    ours = losses.create("dice_ce", lambda_dice=0.5, lambda_ce=1.5, **options)(logits, target)
    assert ours.item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), abs=1e-6)


def test_dice_ce_takes_a_soft_dice_and_weights_ce_like_it():
    logits, target = _random(5)
    weight = [0.5, 1.0, 2.0, 1.5]
    loss = losses.DiceCE(losses.SoftDice(weight=weight, smooth_nr=0.0), lambda_dice=2.0)
    dice = losses.SoftDice(weight=weight, smooth_nr=0.0)(logits, target)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float64))(logits, target)
    assert loss(logits, target).item() == pytest.approx(2.0 * dice.item() + ce.item(), abs=1e-12)
    default = losses.DiceCE()(logits, target).item()
    assert default == pytest.approx(losses.create("dice_ce")(logits, target).item(), abs=1e-12)


def test_dice_ce_refuses_typos_of_dice_options():
    with pytest.raises(UsageError, match="did you mean 'smooth_nr'"):
        losses.create("dice_ce", smooth_n=0.0)
    with pytest.raises(UsageError, match="did you mean 'include_background'"):
        losses.create("dice_ce", include_backgroud=False)
    with pytest.raises(UsageError, match="lambda_ce must be a number >= 0, got -1"):
        losses.create("dice_ce", lambda_ce=-1)
