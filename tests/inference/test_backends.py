"""``medseg predict --backend``: the network in ONNX Runtime or OpenVINO gives torch's
outputs (same image, same model, fp32): probabilities within 1e-4 and labels on >= 99.9 % of
voxels, for one checkpoint and a fold ensemble; ``auto`` takes the first installed backend
of the documented preference; OpenVINO runs the runtime's precision; a bad name gets the
closest valid one. Each engine's tests skip when it is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from medseg.errors import UsageError
from medseg.inference.predict import PredictOptions, predict_case
from medseg.runtime import Runtime

ENGINES = ("onnxruntime", "openvino")


def _needs(backend: str) -> None:
    """Skip unless ``backend`` (an engine, or ``auto``: OpenVINO or ONNX Runtime) runs here."""
    wanted = ENGINES if backend == "auto" else (backend,)
    if not any(importlib.util.find_spec(name) for name in wanted):
        pytest.skip(f"{' / '.join(wanted)} not installed")


def _model(seed=0):
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.sources import LoadedModel

    net = models.create("unet3d", 1, 3, depth=2, width=4, seed=seed)
    card = ModelCard(NetworkSpec.of(net), {"spacing_mm": [5.0, 5.0, 6.0],
                                           "intensity": {"mode": "ct", "window": [-200, 300]}},
                     {1: "a", 2: "b"}, WindowSettings((16, 16, 16), 0.5, batch_size=2))
    return LoadedModel(net, card)


def _phantom():
    from medseg.data.phantom import make_phantom

    return make_phantom((40, 36, 20), (4.0, 4.5, 5.0), seed=3, noise_hu=20.0).image


def _ensemble(tmp_path):
    """A fold ensemble (``mean_softmax``): a run folder of two seeded checkpoints."""
    from medseg.checkpoint import save_checkpoint

    for fold, seed in ((0, 1), (1, 2)):
        member = _model(seed)
        (tmp_path / f"fold_{fold}").mkdir(parents=True)
        save_checkpoint(tmp_path / f"fold_{fold}" / "best.safetensors", member.network,
                        member.card)
    return tmp_path


@pytest.mark.parametrize("ensemble", [False, True], ids=["checkpoint", "fold-ensemble"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "auto"])
def test_backend_agrees_with_torch(backend, ensemble, tmp_path):
    _needs(backend)
    model, image = (_ensemble(tmp_path) if ensemble else _model()), _phantom()
    runs = {name: predict_case(model, image, PredictOptions(save_probabilities=True,
                                                            backend=name), Runtime.cpu())
            for name in ("torch", backend)}
    torch_run, other = runs["torch"], runs[backend]
    assert np.abs(other.probabilities.array - torch_run.probabilities.array).max() <= 1e-4
    assert np.mean(other.labels.array == torch_run.labels.array) >= 0.999
    assert np.unique(torch_run.labels.array).size >= 2


def test_auto_takes_the_first_installed_of_the_preference(monkeypatch):
    from medseg.inference import backends

    assert backends.PREFERENCE["cpu"][0] == "openvino"
    assert backends.PREFERENCE["cpu"][-1] == backends.PREFERENCE["cuda"][-1] == "torch"
    cpu, gpu = Runtime.cpu(), Runtime(torch.device("cuda"), "bf16")
    monkeypatch.setattr(backends, "_installed", lambda name: True)
    assert backends.resolve_backend("auto", cpu) == "openvino"
    assert backends.resolve_backend("auto", gpu) == "torch"
    monkeypatch.setattr(backends, "_installed", lambda name: name != "openvino")
    assert backends.resolve_backend("auto", cpu) == "torch"


def test_engines_refuse_gpus_and_onnxruntime_refuses_bf16():
    from medseg.inference.backends import resolve_backend

    with pytest.raises(UsageError, match="--backend openvino runs on the CPU"):
        resolve_backend("openvino", Runtime(torch.device("cuda"), "bf16"))
    with pytest.raises(UsageError, match="onnxruntime runs float32"):
        resolve_backend("onnxruntime", Runtime(torch.device("cpu"), "bf16"))


@pytest.mark.parametrize("precision, hint", [("fp32", "f32"), ("bf16", "bf16")])
def test_openvino_runs_the_runtime_precision(precision, hint):
    """OpenVINO's own default on AMX / AVX-512 BF16 CPUs is bf16: fp32 must be asked for."""
    _needs("openvino")
    from medseg.inference import backends

    model = _model(3)
    runtime = Runtime(torch.device("cpu"), precision)
    run = backends.engine_predictor("openvino", model.network, 1, (16, 16, 16), runtime)
    (engine,) = backends._ENGINES[model.network].values()
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == hint
    batch = torch.randn((3, 1, 16, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.network(batch)
    got = run(batch)
    assert got.shape == expected.shape == (3, 3, 16, 16, 16)  # an odd batch, one per stream
    diff = float((got - expected).abs().max())
    assert diff <= 1e-3 if precision == "fp32" else 1e-3 < diff < 0.5


def test_bad_backend_name_suggests_the_closest():
    with pytest.raises(UsageError, match="onnxruntime"):
        PredictOptions(backend="onnxrt")


@pytest.mark.parametrize("backend", ENGINES)
def test_cli_predict_with_an_engine_backend(tmp_path, backend):
    _needs(backend)
    from medseg.checkpoint import save_checkpoint
    from medseg.cli import main
    from medseg.io import read_volume, write_volume

    model = _model()
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.network, model.card)
    image = write_volume(_phantom(), tmp_path / "case.nii.gz")
    for name in ("torch", backend):
        assert main(["predict", "-m", str(ckpt), "-i", str(image), "-o",
                     str(tmp_path / f"{name}.nii.gz"), "--device", "cpu",
                     "--backend", name]) == 0
    ours, theirs = (read_volume(tmp_path / f"{b}.nii.gz").array for b in (backend, "torch"))
    assert np.mean(ours == theirs) >= 0.999


def test_qc_and_uncertainty_run_on_the_chosen_backend(monkeypatch):
    """``--qc --backend onnxruntime``: the members run in ONNX Runtime (its predictor is
    built and called), and the QC rows and the uncertainty map equal torch's."""
    from medseg.inference import backends

    calls = []
    real = backends.engine_predictor

    def counting(*args, **kwargs):
        predictor = real(*args, **kwargs)

        def run(batch):
            calls.append(args[0])
            return predictor(batch)

        return run

    monkeypatch.setattr(backends, "engine_predictor", counting)
    model, image = _model(), _phantom()
    options = {"qc": True, "uncertainty": True}
    runs = {name: predict_case(model, image, PredictOptions(backend=name, **options),
                               Runtime.cpu()) for name in ("torch", "onnxruntime")}
    assert calls and set(calls) == {"onnxruntime"}  # the members ran in ONNX Runtime
    torch_run, onnx_run = runs["torch"], runs["onnxruntime"]
    assert np.mean(onnx_run.labels.array == torch_run.labels.array) >= 0.999
    for a, b in zip(torch_run.qc.rows, onnx_run.qc.rows):
        assert a["flag"] == b["flag"]
        assert a["estimated_dice"] == pytest.approx(b["estimated_dice"], abs=1e-3)
    diff = np.abs(onnx_run.qc.uncertainty.array.astype(np.float32)
                  - torch_run.qc.uncertainty.array.astype(np.float32))
    assert diff.max() <= 2e-3
