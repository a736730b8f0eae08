"""Checkpoints: safetensors round trip, no pickle, atomic writes, resume state."""

from __future__ import annotations

import json
import pickle
import random
import struct

import numpy as np
import pytest
import torch

from medseg import __version__
from medseg import checkpoint as ckpt
from medseg.card import ModelCard, NetworkSpec, Postprocess, WindowSettings
from medseg.errors import CheckpointError, UsageError
from medseg.training import resume


class TinyNet(torch.nn.Module):
    def __init__(self, in_channels: int = 1, out_channels: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm = torch.nn.BatchNorm3d(out_channels)
        self.medseg_config = {"name": "tiny", "in_channels": in_channels, "out_channels": out_channels}

    def forward(self, x):
        return self.norm(self.conv(x))


CARD = ModelCard(
    NetworkSpec("tiny", 1, 3),
    {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 2.0]},
    {1: "liver", 2: "spleen"},
    WindowSettings((32, 32, 32), 0.5),
)
RECORD = {"train_config": {"train": {"epochs": 3}}, "epoch": 7,
          "metrics": {"val_mean_dice": 0.875}}


def test_round_trip_weights_and_description(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    net.norm.running_mean += torch.arange(3.0)
    path = ckpt.save_checkpoint(tmp_path / "best.safetensors", net, CARD, **RECORD)
    loaded = ckpt.load_checkpoint(path)
    assert set(loaded.state_dict) == set(net.state_dict())
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict[name], value), name
    assert loaded.card == CARD
    assert loaded.card.model.to_dict() == {"name": "tiny", "in_channels": 1, "out_channels": 3}
    assert loaded.card.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert loaded.card.window == WindowSettings((32, 32, 32), 0.5, "gaussian", 4, ())
    assert loaded.epoch == 7 and loaded.metrics["val_mean_dice"] == 0.875
    assert loaded.medseg_version == __version__ and loaded.format_version == 2
    # The description is plain JSON in the safetensors header, readable by any tool.
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        doc = json.loads(handle.metadata()["medseg"])
    assert doc["card"]["model"]["name"] == "tiny"
    assert doc["card"]["window"] == {"roi_size": [32, 32, 32], "overlap": 0.5,
                                     "blend": "gaussian", "batch_size": 4, "mirror_axes": []}
    assert doc["train_config"] == {"train": {"epochs": 3}}


def test_card_json_round_trip_is_exact():
    card = CARD.replace(window=WindowSettings((16, 24, 8), 0.25, "constant", 3, (2, 0)),
                        postprocess=Postprocess(keep_largest=True))
    text = json.dumps(card.to_dict())
    assert ModelCard.from_dict(json.loads(text)) == card
    assert ModelCard.from_dict(json.loads(text)).window.mirror_axes == (0, 2)


def test_card_channel_names_round_trip_and_must_match_the_network():
    from medseg.errors import CheckpointError, UsageError

    assert "channels" not in CARD.to_dict()  # a card naming none is written as before
    two = ModelCard(NetworkSpec("tiny", 2, 3), {}, {1: "liver"}, WindowSettings(16, 0.5),
                    channels=["water", "fat"])
    doc = json.loads(json.dumps(two.to_dict()))
    assert doc["channels"] == ["water", "fat"]
    assert ModelCard.from_dict(doc) == two and ModelCard.from_dict(doc).channels == ("water", "fat")
    with pytest.raises(UsageError, match=r"1 channel names \['water'\] for a network of 2 input"):
        two.replace(channels=("water",))
    with pytest.raises(CheckpointError, match="model card: 3 channel names"):
        ModelCard.from_dict({**doc, "channels": ["a", "b", "c"]})


def _write_v1(path, net, inference):
    """A checkpoint as medseg wrote it before the model card (format_version 1)."""
    from safetensors.torch import save_file

    doc = {"format_version": 1, "medseg_version": "0.1.0",
           "model": {"name": "tiny"}, "in_channels": 1, "out_channels": 3,
           "label_names": {"1": "liver", "2": "spleen"},
           "preprocessing": {"orientation": "RAS"}, "inference": inference,
           "train_config": {}, "epoch": 5, "metrics": {}}
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"medseg": json.dumps(doc)})
    return path


@pytest.mark.parametrize("inference,window,keep", [
    ({"roi_size": [32, 32, 16], "overlap": 0.25},
     WindowSettings((32, 32, 16), 0.25, "gaussian", 4), False),
    ({"roi_size": [16, 16, 16], "overlap": 0.5, "blend": "constant", "batch_size": 3,
      "keep_largest": True}, WindowSettings((16, 16, 16), 0.5, "constant", 3), True),
])
def test_format_1_checkpoints_still_load(tmp_path, inference, window, keep):
    net = TinyNet()
    path = _write_v1(tmp_path / "v1.safetensors", net, inference)
    loaded = ckpt.load_checkpoint(path)
    assert loaded.format_version == 1 and loaded.epoch == 5
    assert loaded.card.window == window and loaded.card.postprocess.keep_largest is keep
    assert loaded.card.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert loaded.card.model == NetworkSpec("tiny", 1, 3)
    for name, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict[name], value), name


def test_card_that_does_not_describe_the_model_is_refused(tmp_path):
    wrong = CARD.replace(model=NetworkSpec("tiny", 2, 3))
    with pytest.raises(CheckpointError, match="describes network"):
        ckpt.save_checkpoint(tmp_path / "x.safetensors", TinyNet(), wrong)


def test_build_model_with_registry(tmp_path):
    models = pytest.importorskip("medseg.models")
    try:
        net = models.create("unet3d", in_channels=1, out_channels=3, depth=3, width=4)
    except Exception as exc:  # noqa: BLE001 - registry still being written
        pytest.skip(f"medseg.models.create not usable yet: {exc}")
    card = CARD.replace(model=NetworkSpec.of(net))
    path = ckpt.save_checkpoint(tmp_path / "m.safetensors", net, card)
    rebuilt = ckpt.load_checkpoint(path).build_model()
    x = torch.randn(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), net(x), atol=1e-6)
    # weights that do not fit the network are refused, naming the file
    doc = ckpt.load_checkpoint(path)
    doc.state_dict.pop(next(iter(doc.state_dict)))
    with pytest.raises(CheckpointError, match="m.safetensors"):
        doc.build_model()


@pytest.mark.parametrize("payload", ["pickle", "torch_zip", "torch_legacy"])
def test_pickle_payload_is_refused_without_unpickling(tmp_path, payload, monkeypatch):
    path = tmp_path / "evil.safetensors"
    if payload == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif payload == "torch_zip":
        torch.save(TinyNet().state_dict(), path)
    else:
        torch.save(TinyNet().state_dict(), path, _use_new_zipfile_serialization=False)
    # Any attempt to unpickle would fail the test.
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(CheckpointError, match="not a medseg safetensors checkpoint") as exc:
        ckpt.load_checkpoint(path)
    assert "evil.safetensors" in str(exc.value)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    good = ckpt.save_checkpoint(tmp_path / "good.safetensors", TinyNet(), CARD)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        ckpt.load_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07" * 100)
    with pytest.raises(CheckpointError, match="not a medseg safetensors checkpoint"):
        ckpt.load_checkpoint(garbage)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="only 3 bytes"):
        ckpt.load_checkpoint(tiny)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without the 'medseg' metadata"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.safetensors")


def _rewrite_description(path, out, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        doc = json.loads(handle.metadata()["medseg"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for key, value in changes.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    save_file(tensors, str(out), metadata={"medseg": json.dumps(doc)})
    return out


def test_incompatible_version_and_missing_keys(tmp_path):
    good = ckpt.save_checkpoint(tmp_path / "good.safetensors", TinyNet(), CARD)
    future = _rewrite_description(good, tmp_path / "future.safetensors", format_version=3)
    with pytest.raises(CheckpointError, match=r"future.safetensors.*format_version 3"):
        ckpt.load_checkpoint(future)
    nocard = _rewrite_description(good, tmp_path / "nocard.safetensors", card=None)
    with pytest.raises(CheckpointError, match="nocard.safetensors: .*lacks its 'card'"):
        ckpt.load_checkpoint(nocard)
    card = CARD.to_dict()
    card.pop("window")
    nowindow = _rewrite_description(good, tmp_path / "nowindow.safetensors", card=card)
    with pytest.raises(CheckpointError, match="nowindow.safetensors: model card lacks 'window'"):
        ckpt.load_checkpoint(nowindow)
    v1 = _write_v1(tmp_path / "v1.safetensors", TinyNet(), {"roi_size": [8, 8, 8]})
    nomodel = _rewrite_description(v1, tmp_path / "nomodel.safetensors", model=None,
                                   inference=None)
    with pytest.raises(CheckpointError, match="lacks model, inference"):
        ckpt.load_checkpoint(nomodel)


def test_failed_write_leaves_previous_last_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    first = TinyNet()
    ckpt.save_checkpoint(path, first, CARD, **RECORD)
    before = path.read_bytes()

    def crash_midway(tensors, metadata, tmp):
        tmp.write_bytes(before[: len(before) // 2])  # half a file under the temporary name
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_safetensors", crash_midway)
    second = TinyNet()
    with torch.no_grad():
        second.conv.weight.fill_(3.0)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, second, CARD, **{**RECORD, "epoch": 8})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left
    assert ckpt.load_checkpoint(path).epoch == 7


def test_model_without_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="medseg_config"):
        ckpt.save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2), CARD)


def test_resume_state_round_trip_exact(tmp_path):
    torch.manual_seed(3)
    net = TinyNet()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(2, 1, 4, 4, 4)).square().mean().backward()
        opt.step()
    np.random.seed(5)
    random.seed(6)
    state = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": {"scale": 65536.0, "growth_tracker": 3},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "epoch": 4,
        "sampler": {"epoch": 4, "seed": 0},
    }
    path = resume.save_resume_state(tmp_path / "last.resume.safetensors", state)
    back = resume.load_resume_state(path)
    assert back["epoch"] == 4 and back["sampler"] == {"epoch": 4, "seed": 0}
    assert torch.equal(back["rng"]["torch"], torch.get_rng_state())
    assert back["rng"]["python"] == random.getstate()
    np_state = back["rng"]["numpy"]
    assert np_state[0] == "MT19937" and np.array_equal(np_state[1], np.random.get_state()[1])
    # restoring the states reproduces the same random draws
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.set_rng_state(back["rng"]["torch"])
    np.random.set_state(np_state)
    random.setstate(back["rng"]["python"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    # the optimizer state loads into a fresh optimizer and continues identically
    opt2 = torch.optim.AdamW(TinyNet().parameters(), lr=1e-3, weight_decay=0.01)
    opt2.load_state_dict(back["optimizer"])
    for key, value in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][key], value)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    # no pickle: the file is plain safetensors with JSON metadata
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert json.loads(path.read_bytes()[8 : 8 + header_len])["__metadata__"]["medseg_resume"]


def test_resume_state_refuses_checkpoint_and_unstorable(tmp_path):
    good = ckpt.save_checkpoint(tmp_path / "good.safetensors", TinyNet(), CARD)
    with pytest.raises(CheckpointError, match="medseg_resume"):
        resume.load_resume_state(good)
    with pytest.raises(CheckpointError, match="cannot be stored without pickle"):
        resume.save_resume_state(tmp_path / "r.safetensors", {"fn": object()})


# -- per-label post-processing and update_card --------------------------------------------------
def test_postprocess_holds_per_label_choices_and_round_trips():
    post = Postprocess(keep_largest=[3, 1, 3])
    assert post.keep_largest == (1, 3) and post.largest_only == (1, 3)
    assert post.to_dict() == {"keep_largest": [1, 3]}
    assert Postprocess(True).largest_only is None and Postprocess(False).largest_only == ()
    assert Postprocess(keep_largest=[]) == Postprocess(False)
    card = CARD.replace(postprocess=post)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    for bad in ([0], ["liver"], [True], [1.5], "yes", 1):
        with pytest.raises(UsageError, match="keep_largest must be true, false or a list"):
            Postprocess(keep_largest=bad)
    doc = {**CARD.to_dict(), "postprocess": {"keep_largest": [0]}}
    with pytest.raises(CheckpointError, match="model card: keep_largest"):
        ModelCard.from_dict(doc, "x.safetensors")


def test_postprocess_min_size_round_trips_and_is_checked():
    post = Postprocess(keep_largest=(1,), min_size_ml={"3": 0.5, 2: 2})
    assert post.min_size_ml == {2: 2.0, 3: 0.5} and post.active
    assert post.to_dict() == {"keep_largest": [1], "min_size_ml": {"2": 2.0, "3": 0.5}}
    assert Postprocess(min_size_ml={1: 0.1}).active and not Postprocess().active
    assert "min_size_ml" not in Postprocess(True).to_dict()  # older cards' JSON unchanged
    card = CARD.replace(postprocess=post)
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    for bad in ({0: 1.0}, {"liver": 1.0}, {1: -1.0}, {1: 0.0}, {1: float("inf")}, {True: 1.0},
                {1: "big"}, [1, 2]):
        with pytest.raises(UsageError, match="min_size_ml must map label values"):
            Postprocess(min_size_ml=bad)
    doc = {**CARD.to_dict(), "postprocess": {"keep_largest": False, "min_size_ml": {"1": -2}}}
    with pytest.raises(CheckpointError, match="model card: min_size_ml"):
        ModelCard.from_dict(doc, "x.safetensors")


def _raw_tensors(path) -> dict[str, bytes]:
    from safetensors.numpy import load_file

    return {k: v.dtype.str.encode() + v.tobytes() for k, v in load_file(str(path)).items()}


def test_update_card_rewrites_the_card_and_keeps_weights_bit_identical(tmp_path):
    torch.manual_seed(1)
    net = TinyNet()
    path = ckpt.save_checkpoint(tmp_path / "best.safetensors", net, CARD, **RECORD)
    before = _raw_tensors(path)
    new = CARD.replace(postprocess=Postprocess(keep_largest=(2,)))
    assert ckpt.update_card(path, new) == path
    loaded = ckpt.load_checkpoint(path)
    assert loaded.card == new and loaded.card != CARD
    assert (loaded.epoch, loaded.metrics, loaded.train_config) == (
        7, {"val_mean_dice": 0.875}, {"train": {"epochs": 3}})
    assert _raw_tensors(path) == before
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary file left
    with pytest.raises(CheckpointError, match="update_card: the new card describes network"):
        ckpt.update_card(path, new.replace(model=NetworkSpec("tiny", 2, 3)))
    assert ckpt.load_checkpoint(path).card == new


def test_update_card_of_a_format_1_file_writes_format_2(tmp_path):
    net = TinyNet()
    path = _write_v1(tmp_path / "v1.safetensors", net, {"roi_size": [16, 16, 16]})
    before = _raw_tensors(path)
    card = ckpt.load_checkpoint(path).card.replace(postprocess=Postprocess((1,)))
    ckpt.update_card(path, card)
    loaded = ckpt.load_checkpoint(path)
    assert loaded.format_version == 2 and loaded.card == card and loaded.epoch == 5
    assert _raw_tensors(path) == before
