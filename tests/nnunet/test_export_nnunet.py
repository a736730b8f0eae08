"""``medseg export nnunet:FOLDER``: the torch-free runner on a trained nnU-Net model (the
fixture) against ``medseg predict`` (torch fp32, whose outputs equal nnUNetPredictor's:
test_trained_nnunet.py), one fold and the 2-fold ensemble (mean of logits), with and without
mirroring, for each export format (ONNX in ONNX Runtime; OpenVINO IR in OpenVINO, float32).

Tolerance: labels agree on >= 99.9 % of voxels. nnU-Net accumulates the blended logits in
float16 (and so do medseg and the runner, to give nnU-Net's numbers); ONNX Runtime's
convolutions differ from torch's by ~1e-6, which moves a float16 sum across a rounding
boundary now and then: one float16 step of a logit near 8 is 2**-8 * 8 = 0.0078, a
softmax change of up to 0.002. So 99.99 % of probabilities agree within 1e-3 and all
within 4e-3 (one float16 step of the largest logits). OpenVINO's float32 convolutions
differ from torch's by ~1e-4, which crosses those boundaries more often; the same bounds
hold.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.inference.predict import PredictOptions, predict_case
from medseg.io import read_volume
from medseg.runtime import Runtime
from nnunet_model import write_phantom_case

pytest.importorskip("nnunetv2")
ENGINES = {"onnx": "onnxruntime", "openvino": "openvino"}


@pytest.mark.parametrize("fmt", list(ENGINES))
@pytest.mark.parametrize("folds,tta", [((0,), False), ((0, 1), True)])
def test_runner_agrees_with_medseg_predict(nnunet_model, tmp_path, folds, tta, fmt):
    from medseg.export import export_model
    from medseg.sources.nnunet.load import NnunetSource

    pytest.importorskip(ENGINES[fmt])
    torch.set_num_threads(1)
    source = NnunetSource.parse(f"nnunet:{nnunet_model}", folds)
    folder = export_model(source, tmp_path / "export", fmt)
    manifest = json.loads((folder / "model.json").read_text())
    assert len(manifest["networks"]) == len(folds) and manifest["combine"] == "mean_logits"
    assert "scikit-image>=0.21" in (folder / "requirements.txt").read_text().split()
    image, _ = write_phantom_case(tmp_path, "case", shape=(56, 56, 12), spacing=(0.7, 0.7, 3.2),
                                  seed=300, orientation="LPS", oblique_deg=20.0)
    out, probs_out = tmp_path / "labels.nii.gz", tmp_path / "probs.nii.gz"
    result = subprocess.run([sys.executable, str(folder / "predict.py"), str(image), str(out),
                             "--probabilities", str(probs_out), "--tta" if tta else "--no-tta"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    ours = predict_case(source, read_volume(image),
                        PredictOptions(save_probabilities=True, tta=tta), Runtime.cpu())
    labels = nib.load(out)
    probs = np.moveaxis(np.asanyarray(nib.load(probs_out).dataobj), -1, 0)
    assert labels.shape == nib.load(image).shape
    np.testing.assert_allclose(labels.affine, nib.load(image).affine, atol=1e-5)
    assert np.mean(np.asarray(labels.dataobj) == ours.labels.array) >= 0.999
    diff = np.abs(probs - ours.probabilities.array)
    assert np.mean(diff <= 1e-3) >= 0.9999, np.mean(diff <= 1e-3)
    assert diff.max() <= 4e-3, diff.max()
    assert np.unique(ours.labels.array).size >= 3  # the model segments organs
    assert np.abs(probs[:, ::-1] - ours.probabilities.array).max() > 1e-1  # mirrored fails
