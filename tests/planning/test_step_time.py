"""medseg.planning.step_time: the schedule that fits a time budget at a measured step time."""

from __future__ import annotations

import pytest

from medseg.errors import UsageError
from medseg.planning.step_time import measure_step_seconds, plan_training


@pytest.mark.parametrize(
    ("step_s", "budget_s", "expected"),
    [
        (1.0, 120.0, (4, 25)),     # 100 steps at 1.2 s each (1.0 s + 20 % overhead)
        (1.0, 130.0, (4, 27)),     # 108 steps: 4 epochs of 27
        (0.5, 9.0, (1, 15)),       # less than one configured epoch
        (30.0, 10.0, (1, 1)),      # always at least one step
        (0.001, 3600.0, (16, 25)),  # never more than the config's own 400 steps
    ],
)
def test_plan_training_fits_the_budget(step_s, budget_s, expected):
    epochs, per_epoch = plan_training(step_s, budget_s, 16, 25)
    assert (epochs, per_epoch) == expected
    assert epochs * per_epoch <= 16 * 25


def test_plan_training_rejects_non_positive_times():
    with pytest.raises(UsageError, match="positive"):
        plan_training(0.0, 60.0, 16, 25)


def test_measure_step_seconds_times_real_steps_and_restores_the_rng():
    torch = pytest.importorskip("torch")
    from medseg.config import load_config
    from medseg.demo import default_config_path
    from medseg.runtime import Runtime

    cfg = load_config(default_config_path(), ["train.patch_size=[16,16,16]", "train.batch_size=1",
                                              "model.kwargs.depth=2"])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    seconds = measure_step_seconds(cfg, Runtime.resolve("cpu", None), steps=1, warmup=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert 0.0 < seconds < 60.0
