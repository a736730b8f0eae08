"""``Runtime``: device, the one precision policy, torchrun's environment, the predictor."""

from __future__ import annotations

import logging

import pytest
import torch

from medseg import runtime as runtime_module
from medseg.errors import UsageError
from medseg.inference.precision import make_predictor
from medseg.runtime import Runtime, torchrun_env


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend CUDA is present (the policy only asks torch.cuda; nothing runs on it)."""
    def install(bf16: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return install


@pytest.mark.parametrize("amp,expected", [(None, "fp32"), (False, "fp32"), (True, "bf16")])
def test_cpu_policy(amp, expected, monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)
    rt = Runtime.resolve("cpu", amp, environ={})
    assert rt.device == torch.device("cpu") and rt.precision == expected
    assert rt.autocast_dtype is {"fp32": None, "bf16": torch.bfloat16}[expected]


@pytest.mark.parametrize("bf16,amp,expected", [
    (True, None, "bf16"), (True, True, "bf16"), (True, False, "fp32"),
    (False, None, "fp16"), (False, True, "fp16"), (False, False, "fp32"),
])
def test_cuda_policy(fake_gpu, bf16, amp, expected):
    fake_gpu(bf16)
    rt = Runtime.resolve("auto", amp, environ={})
    assert rt.device == torch.device("cuda", 0) and rt.precision == expected


def test_auto_device_without_gpu_is_cpu_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Runtime.resolve("auto", environ={}).device == torch.device("cpu")
    assert Runtime.resolve(None, environ={}).device == torch.device("cpu")
    with pytest.raises(UsageError, match="CUDA is not available"):
        Runtime.resolve("cuda", environ={})
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        Runtime.resolve("tpu", environ={})


def test_torchrun_ranks_pick_their_gpu(fake_gpu):
    fake_gpu(True)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    rt = Runtime.resolve("cuda", environ=env)
    assert (rt.rank, rt.world_size, rt.local_rank) == (3, 4, 1)
    assert rt.device == torch.device("cuda", 1) and rt.distributed and not rt.is_main
    assert Runtime.resolve("cuda:0", environ=env).device == torch.device("cuda", 0)


def test_torchrun_env():
    assert torchrun_env({}) == (0, 1, 0)
    assert torchrun_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(UsageError, match="inconsistent"):
        torchrun_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UsageError, match="integers"):
        torchrun_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_emulated_bf16_warns(monkeypatch, caplog):
    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="medseg.runtime"):
        assert Runtime.resolve("cpu", True, environ={}).precision == "bf16"
    assert "emulated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medseg.runtime"):
        Runtime.resolve("cpu", None, environ={})
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


@pytest.mark.parametrize("precision,autocast,conv_dtype", [
    ("fp32", False, torch.float32), ("bf16", True, torch.bfloat16),
])
def test_predictor_runs_in_the_runtime_precision_and_returns_float32(precision, autocast,
                                                                       conv_dtype):
    torch.manual_seed(0)
    net = _Recorder().eval()
    x = torch.rand(2, 1, 4, 5, 6)
    with torch.inference_mode():
        out = make_predictor(net, Runtime(torch.device("cpu"), precision))(x)
        ref = net.conv(x)
    assert net.seen[0] == (autocast, conv_dtype)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 5, 6)
    # bf16 keeps 8 significant bits: relative error <= 2^-8 per rounding, three roundings here
    tol = 0.0 if precision == "fp32" else 3 * 2.0 ** -8 * float(ref.abs().max()) + 1e-6
    assert float((out - ref).abs().max()) <= tol
