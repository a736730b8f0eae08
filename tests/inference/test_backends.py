"""``medseg predict --backend``: the network in ONNX Runtime gives torch's outputs (same
image, same model): probabilities within 1e-4 and labels on >= 99.9 % of voxels; ``auto``
picks one of the two; a bad name gets the closest valid one."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import UsageError
from medseg.inference.predict import PredictOptions, predict_case
from medseg.runtime import Runtime

pytest.importorskip("onnxruntime")


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


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_backend_agrees_with_torch(backend):
    model, image = _model(), _phantom()
    runs = {name: predict_case(model, image, PredictOptions(save_probabilities=True,
                                                            backend=name), Runtime.cpu())
            for name in ("torch", backend)}
    torch_run, other = runs["torch"], runs[backend]
    assert np.abs(other.probabilities.array - torch_run.probabilities.array).max() <= 1e-4
    assert np.mean(other.labels.array == torch_run.labels.array) >= 0.999
    assert np.unique(torch_run.labels.array).size >= 2


def test_resolve_backend_auto_is_torch_or_onnxruntime_and_cached():
    from medseg.inference import backends

    model = _model(1)
    chosen = backends.resolve_backend("auto", model.network, Runtime.cpu(), 1, (16, 16, 16), 2)
    assert chosen in ("torch", "onnxruntime")
    assert backends._CHOICES[model.network] == chosen


def test_bad_backend_name_suggests_the_closest():
    with pytest.raises(UsageError, match="onnxruntime"):
        PredictOptions(backend="onnxrt")


def test_cli_predict_with_onnxruntime_backend(tmp_path):
    from medseg.checkpoint import save_checkpoint
    from medseg.cli import main
    from medseg.io import read_volume, write_volume

    model = _model()
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.network, model.card)
    image = write_volume(_phantom(), tmp_path / "case.nii.gz")
    for backend in ("torch", "onnxruntime"):
        assert main(["predict", "-m", str(ckpt), "-i", str(image), "-o",
                     str(tmp_path / f"{backend}.nii.gz"), "--device", "cpu",
                     "--backend", backend]) == 0
    ours, theirs = (read_volume(tmp_path / f"{b}.nii.gz").array for b in ("onnxruntime", "torch"))
    assert np.mean(ours == theirs) >= 0.999


def test_qc_and_uncertainty_run_on_the_chosen_backend(monkeypatch):
    """``--qc --backend onnxruntime``: the members run in ONNX Runtime (its predictor is
    built and called), and the QC rows and the uncertainty map equal torch's."""
    from medseg.inference import backends

    calls = []
    real = backends.onnx_predictor

    def counting(*args, **kwargs):
        predictor = real(*args, **kwargs)

        def run(batch):
            calls.append(batch.shape[0])
            return predictor(batch)

        return run

    monkeypatch.setattr(backends, "onnx_predictor", counting)
    model, image = _model(), _phantom()
    options = {"qc": True, "uncertainty": True}
    runs = {name: predict_case(model, image, PredictOptions(backend=name, **options),
                               Runtime.cpu()) for name in ("torch", "onnxruntime")}
    assert calls  # the members ran in ONNX Runtime
    torch_run, onnx_run = runs["torch"], runs["onnxruntime"]
    assert np.mean(onnx_run.labels.array == torch_run.labels.array) >= 0.999
    for a, b in zip(torch_run.qc.rows, onnx_run.qc.rows):
        assert a["flag"] == b["flag"]
        assert a["estimated_dice"] == pytest.approx(b["estimated_dice"], abs=1e-3)
    diff = np.abs(onnx_run.qc.uncertainty.array.astype(np.float32)
                  - torch_run.qc.uncertainty.array.astype(np.float32))
    assert diff.max() <= 2e-3
