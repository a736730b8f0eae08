"""Every model traces to TorchScript and exports to ONNX; ONNX Runtime matches PyTorch."""

import io

import numpy as np
import pytest
import torch

from medseg import models

EXPORT_CONFIGS = [
    ("unet3d", {"depth": 3, "width": 2}),
    ("unet3d", {"depth": 3, "width": 2, "upsample": "unpool"}),
    ("unet3d", {"depth": 3, "width": 2, "upsample": "trilinear", "deep_supervision": True}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1, "separable": True, "decoder": False,
                   "output_stride": 16}),
    ("fcn3d", {"width": 2, "convs_per_stage": 1}),
]
SHAPE = (1, 1, 19, 16, 12)


def _model(name, kwargs):
    model = models.create(name, 1, 3, seed=0, **kwargs).eval()
    return model, torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "kwargs"), EXPORT_CONFIGS, ids=lambda v: str(v))
def test_torchscript_trace(name, kwargs):
    model, x = _model(name, kwargs)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs"), EXPORT_CONFIGS, ids=lambda v: str(v))
def test_onnx_runtime_matches_pytorch(name, kwargs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model, x = _model(name, kwargs)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"])
    assert onnx.load(str(path)).opset_import[0].version >= 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == ref.shape == (1, 3, *SHAPE[2:])
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
