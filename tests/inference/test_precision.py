"""Network precision at inference: the ``amp`` switch on CPU and CUDA, and bf16 on the CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from medseg.inference import precision
from medseg.inference.precision import autocast_dtype, make_predictor

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("device,amp,expected", [
    (CPU, None, None), (CPU, False, None), (CPU, True, torch.bfloat16),
    (CUDA, None, torch.float16), (CUDA, False, None), (CUDA, True, torch.float16),
])
def test_autocast_dtype_policy(device, amp, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(device, amp) is expected


def test_emulated_bf16_warns(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="medseg.inference.precision"):
        assert autocast_dtype(CPU, True) is torch.bfloat16
    assert "emulated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg.inference.precision"):
        autocast_dtype(CPU, None)
    assert caplog.text == ""


class _Recorder(torch.nn.Module):
    """A 1x1x1 convolution that records the autocast state it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), self.conv(x).dtype))
        return self.conv(x)


@pytest.mark.parametrize("amp,autocast,conv_dtype", [
    (None, False, torch.float32), (False, False, torch.float32), (True, True, torch.bfloat16),
])
def test_predictor_runs_in_the_chosen_precision_and_returns_float32(amp, autocast, conv_dtype):
    torch.manual_seed(0)
    net = _Recorder().eval()
    x = torch.rand(2, 1, 4, 5, 6)
    with torch.inference_mode():
        out = make_predictor(net, CPU, amp)(x)
        ref = net.conv(x)
    assert net.seen[0] == (autocast, conv_dtype)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5, 6)
    # bf16 keeps 8 significant bits: relative error <= 2^-8 per rounding, three roundings here
    tol = 0.0 if amp is not True else 3 * 2.0 ** -8 * float(ref.abs().max()) + 1e-6
    assert float((out - ref).abs().max()) <= tol
