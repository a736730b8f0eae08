"""medseg.sources.nnunet.safe_load: nnU-Net checkpoints and pickles read without running code."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import CheckpointError
from medseg.sources.nnunet.safe_load import NUMPY_GLOBALS, read_checkpoint, read_pickle
from nnunet.nnunet_tiny import DATASET, PLANS, save_trainer_checkpoint


class Custom:
    """A class of the test module: harmless, but not on any allow-list."""

    def __init__(self) -> None:
        self.value = 1


class RunsCommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsLen:
    """Unpickling this calls ``len("abc")``."""

    def __reduce__(self):
        return len, ("abc",)


@pytest.fixture(scope="module")
def trainer_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("ckpt") / "fold_0" / "checkpoint_final.pth"
    weights = save_trainer_checkpoint(path, PLANS, DATASET, "3d_fullres", 0)
    return path, weights


def _one_line_error(call, *args) -> str:
    with pytest.raises(CheckpointError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_written_by_nnunets_trainer_is_read(trainer_checkpoint):
    path, weights = trainer_checkpoint
    checkpoint = read_checkpoint(path)
    # Oracle: the trainer's own network, and the file read by full (trusted) unpickling.
    trusted = torch.load(path, map_location="cpu", weights_only=False)
    assert checkpoint.weights.keys() == weights.keys() == trusted["network_weights"].keys()
    for key, value in weights.items():
        assert torch.equal(checkpoint.weights[key], value)
        assert torch.equal(checkpoint.weights[key], trusted["network_weights"][key])
    assert checkpoint.mirror_axes == (0, 1, 2) == trusted["inference_allowed_mirroring_axes"]
    assert checkpoint.trainer_name == "nnUNetTrainer"
    assert checkpoint.configuration == "3d_fullres"
    assert checkpoint.path == path
    # It did hold numpy scalars (which weights_only alone refuses).
    assert isinstance(trusted["_best_ema"], np.floating)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)


def _rewrite_pickle(path: Path, out: Path, old: bytes, new: bytes) -> None:
    """Copy a torch zip checkpoint, replacing bytes in its data.pkl."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert old in data
                data = data.replace(old, new)
            target.writestr(item, data)


def test_numpy_1_names_of_scalars_are_read(trainer_checkpoint, tmp_path):
    """Checkpoints saved under numpy 1.x (TotalSegmentator's) name numpy.core.multiarray."""
    path, weights = trainer_checkpoint
    legacy = tmp_path / "legacy.pth"
    _rewrite_pickle(path, legacy, b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    checkpoint = read_checkpoint(legacy)
    assert all(torch.equal(checkpoint.weights[k], v) for k, v in weights.items())


def test_compile_and_ddp_prefixes_are_removed(tmp_path):
    path = tmp_path / "prefixed.pth"
    weight, bias = torch.arange(3.0), torch.ones(2)
    torch.save({"network_weights": {"_orig_mod.conv.weight": weight, "module.conv.bias": bias},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": None,
                "init_args": {"configuration": "2d", "device": torch.device("cpu")}}, path)
    checkpoint = read_checkpoint(path)
    assert list(checkpoint.weights) == ["conv.weight", "conv.bias"]
    assert torch.equal(checkpoint.weights["conv.weight"], weight)
    assert checkpoint.mirror_axes is None
    assert checkpoint.configuration == "2d"


def test_an_object_of_an_unknown_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "extra": Custom()}, path)
    message = _one_line_error(read_checkpoint, path)
    assert str(path) in message
    assert f"'{__name__}.Custom'" in message or "Custom'" in message
    assert "does not load" in message


def test_a_payload_that_runs_a_command_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"network_weights": {"w": torch.zeros(1)}, "x": RunsCommand(marker)}, path)
    message = _one_line_error(read_checkpoint, path)
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert str(path) in message
    assert not marker.exists()
    # Control: the payload does run when unpickled without restrictions.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_garbage_and_non_checkpoints_are_refused_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 3)
    assert "not a readable PyTorch checkpoint" in _one_line_error(read_checkpoint, garbage)
    no_weights = tmp_path / "no_weights.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, no_weights)
    message = _one_line_error(read_checkpoint, no_weights)
    assert "network_weights" in message and "state_dict" in message
    assert "not found" in _one_line_error(read_checkpoint, tmp_path / "absent.pth")
    bad_axes = tmp_path / "axes.pth"
    torch.save({"network_weights": {}, "inference_allowed_mirroring_axes": "xy"}, bad_axes)
    assert "inference_allowed_mirroring_axes" in _one_line_error(read_checkpoint, bad_axes)


def test_read_pickle_resolves_only_allowed_names(tmp_path):
    path = tmp_path / "data.pkl"
    labels = [np.int64(1), np.int64(2)]
    path.write_bytes(pickle.dumps(([len], [{"labels": labels, "scale": np.float32(0.5)}])))
    functions, kwargs = read_pickle(path, {**NUMPY_GLOBALS, "builtins.len": "len"})
    assert functions == ["len"]
    assert kwargs[0]["labels"] == [1, 2] and kwargs[0]["scale"] == np.float32(0.5)
    message = _one_line_error(read_pickle, path, NUMPY_GLOBALS)
    assert "'builtins.len'" in message and str(path) in message


def test_read_pickle_refuses_a_command_and_garbage(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"steps": [RunsCommand(marker)]}, protocol=2))
    assert "system'" in _one_line_error(read_pickle, evil, NUMPY_GLOBALS)
    assert not marker.exists()
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    assert "not a readable pickle" in _one_line_error(read_pickle, garbage, {})
    # A name mapped to a stand-in that pickle then tries to call: refused, not crashed.
    called = tmp_path / "called.pkl"
    called.write_bytes(pickle.dumps(CallsLen()))
    message = _one_line_error(read_pickle, called, {"builtins.len": "len"})
    assert "not a readable pickle" in message and str(called) in message
