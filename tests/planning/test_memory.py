"""The training memory estimate of a planned network against the peak resident memory of
one real CPU training step (measured in a subprocess: its high-water RSS, VmHWM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.planning.design import design, model_kwargs
from medseg.planning.memory import training_memory_bytes

SCRIPT = Path(__file__).with_name("measure_step.py")
ROOT = Path(__file__).resolve().parents[2]


def _measured(kwargs, channels, patch, batch) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(SCRIPT), json.dumps(kwargs), *map(str, channels),
                          *map(str, patch), str(batch)], capture_output=True, text=True,
                         check=True, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("layout, shape, spacing", [
    ("3d", (160, 160, 96), (1.0, 1.0, 1.0)),
    ("slab", (256, 256, 20), (0.7, 0.7, 5.0)),
])
def test_estimate_within_30_percent_of_the_measured_peak(layout, shape, spacing):
    # a plan for a 1 GiB budget: large enough that activations dominate the measurement
    planned = design(layout, shape, spacing, (1, 3), 2**30, None)
    kwargs = {**model_kwargs(planned.pools), "deep_supervision": True}
    estimate = training_memory_bytes("unet3d", kwargs, 1, 3, planned.patch, 2)
    measured = _measured(kwargs, (1, 3), planned.patch, 2)
    assert 0.7 * measured <= estimate <= 1.3 * measured, (planned, estimate, measured)
