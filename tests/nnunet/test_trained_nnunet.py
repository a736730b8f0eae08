"""A trained nnU-Net v2 model (nnU-Net's own planning, preprocessing and training on phantoms,
``tests/nnunet_model.py``) through medseg, against ``nnUNetPredictor`` on the same weights.

On phantom cases in RAS, LPS and an oblique orientation, with anisotropic spacing (one of
them anisotropic enough for nnU-Net's separate-z resampling): medseg's probabilities equal
the predictor's within 1e-4 and labels agree on >= 99.9 % of voxels, for one fold and a
2-fold ensemble, with and without mirroring, 3d_fullres and 2d. A mirrored or transposed
output fails the same comparison.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.inference.predict import PredictOptions, predict_case
from medseg.io import read_volume
from medseg.sources.nnunet.load import NnunetSource
from medseg.runtime import Runtime
from nnunet_model import run_predictor, write_phantom_case

pytest.importorskip("nnunetv2")

#: (orientation, oblique degrees, spacing mm (x, y, z), shape voxels)
CASES = {
    "RAS": ("RAS", 0.0, (1.1, 0.9, 2.2), (36, 44, 18)),
    "LPS": ("LPS", 0.0, (0.9, 0.9, 2.8), (44, 44, 14)),
    "oblique-separate-z": ("RAS", 20.0, (0.7, 0.7, 3.2), (56, 56, 12)),
}


def compare(folder: Path, tmp_path: Path, case: str, folds, mirroring: bool) -> np.ndarray:
    """Run both predictors on one phantom; assert the tolerances; return medseg's probs
    minus nothing (the arrays are checked here) and give the probabilities for more checks."""
    orientation, oblique, spacing, shape = CASES[case]
    image, _ = write_phantom_case(tmp_path, "case", shape=shape, spacing=spacing, seed=300,
                                  orientation=orientation, oblique_deg=oblique)
    [label_file] = run_predictor(folder, [image], tmp_path / "nnunet", folds=folds,
                                 mirroring=mirroring)
    theirs_labels = np.asarray(nib.load(label_file).dataobj)
    theirs = np.load(tmp_path / "nnunet" / "case.npz")["probabilities"].transpose(0, 3, 2, 1)
    ours = predict_case(NnunetSource.parse(f"nnunet:{folder}", folds), read_volume(image),
                        PredictOptions(save_probabilities=True, tta=mirroring),
                        Runtime.resolve("cpu"))
    assert ours.probabilities.shape == theirs.shape
    diff = np.abs(ours.probabilities.array - theirs).max()
    agree = np.mean(ours.labels.array == theirs_labels)
    assert diff <= 1e-4, diff
    assert agree >= 0.999, agree
    assert np.unique(theirs_labels).size >= 3  # the model segments organs: not near-ties
    # a mirrored or transposed output fails the same comparison
    assert np.abs(ours.probabilities.array[:, ::-1] - theirs).max() > 1e-2
    n = min(theirs.shape[1:3])
    assert np.abs(ours.probabilities.array[:, :n, :n].transpose(0, 2, 1, 3)
                  - theirs[:, :n, :n]).max() > 1e-2
    return ours.probabilities.array


@pytest.mark.parametrize("case,folds,mirroring", [
    ("RAS", (0,), False), ("LPS", (0, 1), True), ("oblique-separate-z", (0,), True),
    ("oblique-separate-z", (0, 1), False)])
def test_3d_fullres_equals_nnunet_predictor(nnunet_model, tmp_path, case, folds, mirroring):
    torch.set_num_threads(1)
    compare(nnunet_model, tmp_path, case, folds, mirroring)


@pytest.mark.parametrize("case,mirroring", [("LPS", True), ("oblique-separate-z", False)])
def test_2d_equals_nnunet_predictor(nnunet_model_2d, tmp_path, case, mirroring):
    torch.set_num_threads(1)
    compare(nnunet_model_2d, tmp_path, case, (0,), mirroring)
