"""Temperature scaling on an overconfident model reduces the ECE (checked by hand)."""

import numpy as np
import pytest
import torch

from medseg.inference.calibration import _tempered, fit_temperature
from medseg.inference.members import temper_
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
    tempered = temper_(p.clone(), 2.5)
    assert torch.allclose(tempered, torch.softmax(z / 2.5, 0), atol=1e-6)
    assert torch.equal(tempered.argmax(0), p.argmax(0))
