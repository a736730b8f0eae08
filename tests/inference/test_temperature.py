"""Temperature scaling on an overconfident model reduces the ECE (checked by hand)."""

import numpy as np
import pytest
import torch

from medseg.confidence import Confidence
from medseg.inference.calibration import (
    LabelChoice,
    _calibration,
    _tempered,
    _unless_worse,
    choose_label_temperatures,
    fit_temperature,
    split_halves,
)
from medseg.confidence import temper
from medseg.inference.members import label_temperature
from medseg.metrics.calibration import expected_calibration_error


def _overconfident(n=20000, k=3, scale=3.0, seed=0):
    """Labels drawn from softmax(z); the model reports softmax(scale * z): overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return scale * z, y


def _ece_by_hand(p, y, bins=15):
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(bins):
        inside = (conf > b / bins) & (conf <= (b + 1) / bins) if b else (conf <= 1 / bins)
        if inside.any():
            total += inside.sum() / len(y) * abs((pred[inside] == y[inside]).mean()
                                                 - conf[inside].mean())
    return total


def test_temperature_recovers_the_overconfidence_and_halves_the_ece():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.08)
    before, after = _tempered(logits, 1.0), _tempered(logits, t)
    ece_before, ece_after = _ece_by_hand(before, y), _ece_by_hand(after, y)
    assert expected_calibration_error(before, y) == pytest.approx(ece_before)
    assert expected_calibration_error(after, y) == pytest.approx(ece_after)
    assert ece_before > 0.1 and ece_after <= ece_before / 2


def test_temper_is_softmax_of_scaled_logits_and_keeps_the_argmax():
    z = torch.randn(4, 5, 6, 7, generator=torch.Generator().manual_seed(1))
    p = torch.softmax(z, 0)
    tempered = temper(p.numpy(), 2.5)
    assert tempered.dtype == np.float32
    np.testing.assert_allclose(tempered, torch.softmax(z / 2.5, 0).numpy(), atol=1e-6)
    assert np.array_equal(tempered.argmax(0), p.argmax(0).numpy())
    assert temper(p.numpy(), 1.0) is not None and np.array_equal(temper(p.numpy(), 1.0), p)


# -- a temperature per label (top-label: by the voxel's predicted label) ----------------------
FACTORS = (1.5, 2.5, 4.0)


def _overconfident_per_label(n=60000, factors=FACTORS, seed=1):
    """Labels drawn from softmax(z); a voxel whose argmax is c is reported as
    softmax(factors[c] * z): each predicted label overconfident by its own known factor."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, len(factors)))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)  # inverse-CDF draw per row
    scaled = np.asarray(factors)[z.argmax(1)][:, None] * z
    logp = scaled - np.log(np.exp(scaled).sum(1, keepdims=True))
    return logp, y


def test_label_temperatures_recover_each_factor_where_one_temperature_cannot():
    logp, y = _overconfident_per_label()
    held_out = split_halves(np.zeros(len(y), int), np.random.default_rng(0))
    single, own, choices = choose_label_temperatures(logp, y, held_out)
    assert sorted(own) == [0, 1, 2] and all(c.kept for c in choices)
    for c, factor in enumerate(FACTORS):
        assert own[c] == pytest.approx(factor, rel=0.04)
        assert choices[c].nll_label < choices[c].nll_single
    # the single T lies between the factors: at least 25 % off the outer ones
    assert FACTORS[0] < single < FACTORS[-1]
    assert min(abs(single / f - 1) for f in (FACTORS[0], FACTORS[-1])) > 0.25
    per_label = _tempered(logp, tuple(own[c] for c in range(3)))
    one = _tempered(logp, single)
    ece_label = expected_calibration_error(per_label, y)
    ece_one = expected_calibration_error(one, y)
    assert ece_label == pytest.approx(_ece_by_hand(per_label, y))
    assert ece_label < 0.6 * ece_one
    np.testing.assert_array_equal(per_label.argmax(1), logp.argmax(1))  # argmax kept


def test_label_temperatures_are_not_kept_when_they_do_not_help():
    """One factor for all labels: on the held-out half no label's own T beats the single one
    by two standard errors, so none is kept; the single T recovers the factor."""
    logp, y = _overconfident_per_label(factors=(2.5, 2.5, 2.5), seed=3)
    groups = np.repeat(np.arange(4), len(y) // 4)  # four "cases": even fit, odd held out
    held_out = split_halves(groups, np.random.default_rng(0))
    np.testing.assert_array_equal(held_out, groups % 2 == 1)
    single, own, choices = choose_label_temperatures(logp, y, held_out)
    assert own == {} and not any(c.kept for c in choices)
    assert single == pytest.approx(2.5, rel=0.04)


def test_calibration_composes_with_the_model_temperatures():
    """The predicted probabilities already carry the card's temperatures: new = old x
    fitted factor, per label; labels without their own keep the single T."""
    logp, y = _overconfident_per_label()
    old = Confidence(temperature=2.0, label_temperatures={2: 3.0})
    result = _calibration(logp, y, old, 1.5, {1: 1.2}, (), 1)
    assert result.temperature == pytest.approx(3.0)
    assert result.label_temperatures == pytest.approx({1: 2.4, 2: 4.5})
    conf = result.apply(old)
    assert conf.temperatures(3) == pytest.approx((3.0, 2.4, 4.5))


def test_label_temperatures_that_raise_the_ece_are_dropped():
    """A label temperature of 6 on data whose single best T is 2.5 over-flattens that
    label's voxels: its ECE is worse than the single T's, so the result keeps T alone (and
    marks the choice not kept); a label T close to the single one is kept."""
    logp, y = _overconfident()
    factor = fit_temperature(logp, y)
    choice = LabelChoice(1, 100, 100, 6.0, 0.5, 0.4, True)
    bad = _calibration(logp, y, Confidence(), factor, {1: 6.0}, (choice,), 1)
    assert bad.after.ece > bad.single.ece
    kept = _unless_worse(bad, logp, y, Confidence())
    assert kept.label_temperatures == {} and kept.after.ece == kept.single.ece
    assert kept.labels[0].kept is False and kept.temperature == pytest.approx(factor)
    near = _calibration(logp, y, Confidence(), factor, {1: factor}, (choice,), 1)
    assert _unless_worse(near, logp, y, Confidence()) is near


def test_numpy_and_torch_label_temperatures_agree():
    from medseg.confidence import label_scaled

    z = torch.randn(3, 5, 6, 7, generator=torch.Generator().manual_seed(2))
    temps = (1.0, 2.0, 0.5)
    expected = torch.softmax(z / torch.tensor(temps)[z.argmax(0)][None], 0)
    tempered = temper(torch.softmax(z, 0).numpy(), temps)
    np.testing.assert_allclose(tempered, expected.numpy(), atol=1e-5)
    assert np.array_equal(tempered.argmax(0), z.argmax(0).numpy())
    by_numpy = label_scaled(np.log(torch.softmax(z, 0).numpy()), temps)
    e = np.exp(by_numpy - by_numpy.max(0))
    np.testing.assert_allclose(e / e.sum(0), expected.numpy(), atol=1e-5)
    assert torch.allclose(z / label_temperature(z, temps), torch.from_numpy(
        label_scaled(z.numpy(), temps)))


def test_a_case_median_temperature_is_not_decided_by_one_failing_case():
    """Five cases overconfident by 2 and one by 8 holding as many voxels as the five: the
    pooled fit lands between them, the case median at 2 (the middle of the five cases' own
    fits exactly); a case below MIN_CASE_VOXELS rows has no say."""
    from medseg.inference.calibration import MIN_CASE_VOXELS

    parts = [_overconfident(n=4000, scale=2.0, seed=s) for s in range(5)]
    parts.append(_overconfident(n=20000, scale=8.0, seed=9))
    parts.append(_overconfident(n=MIN_CASE_VOXELS - 1, scale=50.0, seed=10))
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    cases = np.concatenate([np.full(p[1].size, i) for i, p in enumerate(parts)])
    own = [fit_temperature(*p) for p in parts[:6]]
    assert fit_temperature(z, y, cases) == pytest.approx(float(np.median(own)))
    assert fit_temperature(z, y, cases) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(z, y) > 3.0
    few = np.zeros(y.size, dtype=bool)
    few[:MIN_CASE_VOXELS - 1] = True
    assert fit_temperature(z[few], y[few], cases[few]) == pytest.approx(
        fit_temperature(z[few], y[few]))
