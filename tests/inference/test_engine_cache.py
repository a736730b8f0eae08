"""The engine cache (:mod:`medseg.inference.engine_cache`): ``--backend onnxruntime|openvino``
exports a network once and later processes (here: a model loaded again from its checkpoint,
so nothing is shared in memory) reuse the entry with identical outputs; a damaged entry is
found by its sizes and SHA-256 and built again; a half-built entry (a killed process) is
never used; two builders of one entry end with one; the key follows the weights and the
window; ``MEDSEG_CACHE=off`` or an unwritable cache folder runs uncached."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from medseg.inference import backends, engines
from medseg.inference.engine_cache import cached_network, entry_key, verify_entry
from medseg.inference.predict import PredictOptions, predict_case
from medseg.runtime import Runtime

ENGINES = ("onnxruntime", "openvino")


def _needs(engine: str) -> None:
    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} not installed")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty cache root in ``$MEDSEG_CACHE``."""
    root = tmp_path / "cache"
    monkeypatch.setenv("MEDSEG_CACHE", str(root))
    return root


@pytest.fixture()
def exports(monkeypatch):
    """Spy on the ONNX export: the list of the networks exported."""
    calls = []
    real = backends.network_to_onnx

    def spy(network, *args, **kwargs):
        calls.append(network)
        return real(network, *args, **kwargs)

    monkeypatch.setattr(backends, "network_to_onnx", spy)
    return calls


def _checkpoint(tmp_path, seed=0):
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.checkpoint import save_checkpoint

    net = models.create("unet3d", 1, 3, depth=2, width=4, seed=seed)
    card = ModelCard(NetworkSpec.of(net), {"spacing_mm": [5.0, 5.0, 6.0],
                                           "intensity": {"mode": "ct", "window": [-200, 300]}},
                     {1: "a", 2: "b"}, WindowSettings((16, 16, 16), 0.5, batch_size=2))
    return save_checkpoint(tmp_path / f"m{seed}.safetensors", net, card)


def _predict(checkpoint, backend):
    """A fresh process's predict: the checkpoint loaded again (a new network object)."""
    from medseg.data.phantom import make_phantom

    image = make_phantom((40, 36, 20), (4.0, 4.5, 5.0), seed=3, noise_hu=20.0).image
    return predict_case(str(checkpoint), image,
                        PredictOptions(save_probabilities=True, backend=backend), Runtime.cpu())


def _entries(root):
    return sorted(p for p in (root / "engines").iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("engine", ENGINES)
def test_second_predict_reuses_the_entry(cache, exports, tmp_path, engine):
    _needs(engine)
    checkpoint = _checkpoint(tmp_path)
    first = _predict(checkpoint, engine)
    assert len(exports) == 1
    (entry,) = _entries(cache)
    assert verify_entry(entry) is None
    second = _predict(checkpoint, engine)
    assert len(exports) == 1  # not exported again
    np.testing.assert_array_equal(second.labels.array, first.labels.array)
    np.testing.assert_array_equal(second.probabilities.array, first.probabilities.array)
    torch_run = _predict(checkpoint, "torch")
    assert np.abs(second.probabilities.array - torch_run.probabilities.array).max() <= 1e-4
    if engine == "openvino":  # OpenVINO kept its compiled blob in the entry
        assert list((entry / "compiled").glob("*.blob"))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no entry.json"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_damaged_entry_is_built_again(cache, exports, tmp_path, engine, damage):
    _needs(engine)
    checkpoint = _checkpoint(tmp_path)
    first = _predict(checkpoint, engine)
    (entry,) = _entries(cache)
    victim = entry / ("network.bin" if engine == "openvino" else "network.onnx")
    data = bytearray(victim.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncated":
        victim.write_bytes(bytes(data[:-100]))
    else:
        (entry / "entry.json").unlink()
    assert verify_entry(entry) is not None
    again = _predict(checkpoint, engine)
    assert len(exports) == 2  # exported again
    assert _entries(cache) == [entry] and verify_entry(entry) is None
    np.testing.assert_array_equal(again.labels.array, first.labels.array)
    np.testing.assert_allclose(again.probabilities.array, first.probabilities.array, atol=1e-6)


def test_a_damaged_openvino_blob_is_compiled_again(cache, exports, tmp_path):
    _needs("openvino")
    checkpoint = _checkpoint(tmp_path)
    first = _predict(checkpoint, "openvino")
    (entry,) = _entries(cache)
    (blob,) = (entry / "compiled").glob("*.blob")
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 3])
    again = _predict(checkpoint, "openvino")
    assert len(exports) == 1
    np.testing.assert_array_equal(again.labels.array, first.labels.array)
    np.testing.assert_allclose(again.probabilities.array, first.probabilities.array, atol=1e-6)


def _net(seed=0):
    from medseg import models

    return models.create("unet3d", 1, 3, depth=2, width=4, seed=seed)


def _writer(log):
    def write(network, path):
        log.append(path)
        path.write_bytes(b"network " + str(len(log)).encode())
    return write


def test_a_half_built_entry_is_never_used(tmp_path):
    """A killed builder leaves its temporary folder, which is ignored; a failing writer
    leaves nothing."""
    net, log = _net(), []
    key = entry_key(net, "onnxruntime", 1, (16, 16, 16), 17)
    half = tmp_path / "engines" / f".tmp-{key[:12]}-killed"
    half.mkdir(parents=True)
    (half / "network.onnx").write_bytes(b"half")
    path = cached_network(net, "onnxruntime", 1, (16, 16, 16), 17, _writer(log), tmp_path)
    assert path == tmp_path / "engines" / key / "network.onnx"
    assert path.read_bytes() == b"network 1" and len(log) == 1

    def failing(network, path):
        path.write_bytes(b"part")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cached_network(_net(1), "onnxruntime", 1, (16, 16, 16), 17, failing, tmp_path)
    names = {p.name for p in (tmp_path / "engines").iterdir()}
    assert names == {key, half.name}  # nothing of the failed build


def test_two_builders_of_one_entry_end_with_one(tmp_path):
    """Another process renames the same entry into place while this one writes: this
    build is dropped and the other's entry used."""
    net, log = _net(), []
    args = (net, "onnxruntime", 1, (16, 16, 16), 17)

    def racing(network, path):
        cached_network(*args, _writer(log), tmp_path)  # the other process, finishing first
        path.write_bytes(b"ours")

    path = cached_network(*args, racing, tmp_path)
    assert path.read_bytes() == b"network 1"
    assert [p.name for p in (tmp_path / "engines").iterdir()] == [path.parent.name]


def test_the_key_follows_weights_window_engine_and_opset():
    a, same, other = _net(0), _net(0), _net(1)
    key = entry_key(a, "onnxruntime", 1, (16, 16, 16), 17)
    assert entry_key(same, "onnxruntime", 1, (16, 16, 16), 17) == key
    changed = [entry_key(other, "onnxruntime", 1, (16, 16, 16), 17),
               entry_key(a, "openvino", 1, (16, 16, 16), 17),
               entry_key(a, "onnxruntime", 1, (16, 16, 32), 17),
               entry_key(a, "onnxruntime", 1, (16, 16, 16), 18)]
    assert len({key, *changed}) == 5


def test_cache_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSEG_CACHE", str(tmp_path / "c"))
    assert engines.cache_root() == tmp_path / "c"
    monkeypatch.setenv("MEDSEG_CACHE", "off")
    assert engines.cache_root() is None
    monkeypatch.delenv("MEDSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.cache_root() == tmp_path / "xdg" / "medseg"


@pytest.mark.parametrize("setting", ["off", "a file"])
def test_no_usable_cache_runs_uncached(monkeypatch, exports, tmp_path, setting):
    _needs("onnxruntime")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MEDSEG_CACHE", "off" if setting == "off" else str(blocker / "c"))
    checkpoint = _checkpoint(tmp_path)
    runs = [_predict(checkpoint, "onnxruntime") for _ in range(2)]
    assert len(exports) == 2  # exported in memory each time
    np.testing.assert_array_equal(runs[0].labels.array, runs[1].labels.array)
    assert sorted(os.listdir(tmp_path)) == sorted(["blocker", checkpoint.name])


def test_sweep_removes_only_stale_leftovers(tmp_path):
    """A killed build's ``.tmp-*`` and a killed removal's ``.old-*``, two hours old, go; a
    build younger than STALE_S (another process at work) and an entry stay."""
    import os
    import time

    from medseg.inference.engine_cache import STALE_S, sweep

    old_tmp, old_old = tmp_path / ".tmp-abc-1", tmp_path / ".old-2"
    young, entry = tmp_path / ".tmp-abc-3", tmp_path / "0123abcd"
    for folder in (old_tmp, old_old, young, entry):
        folder.mkdir()
        (folder / "network.onnx").write_bytes(b"x")
    hours_ago = time.time() - 2 * 3600
    for folder in (old_tmp, old_old, entry):
        os.utime(folder, (hours_ago, hours_ago))
    assert STALE_S < 2 * 3600
    assert sorted(sweep(tmp_path)) == sorted([old_tmp, old_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-abc-3", "0123abcd"]
