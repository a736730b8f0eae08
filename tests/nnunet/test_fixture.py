"""The nnU-Net model fixtures are real trained models: complete folders that learned the phantoms.

Every other nnU-Net test compares medseg with ``nnUNetPredictor`` on these models; a model that
predicted near-ties (or nothing) would make those comparisons meaningless, so this checks
that the predictor's labels match the phantoms' ground truth and its probabilities are sure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_volume
from nnunet_model import DATASET, LABELS, run_predictor

pytestmark = pytest.mark.slow


def _dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = pred == label, truth == label
    return 2.0 * float(np.sum(p & t)) / float(np.sum(p) + np.sum(t))


def _training_cases(model: Path, names: list[str]) -> tuple[list[Path], list[Path]]:
    raw = model.parents[2] / "nnUNet_raw" / DATASET
    return ([raw / "imagesTr" / f"{n}_0000.nii.gz" for n in names],
            [raw / "labelsTr" / f"{n}.nii.gz" for n in names])


#: Dice every label must exceed on training cases. The short CPU training is not bitwise
#: reproducible across machines (thread scheduling); a fresh build measured 0.79-0.99.
LEARNED_DICE = 0.7


def _check_learned(model: Path, folds: tuple, out: Path) -> None:
    """The model segments every label (Dice > LEARNED_DICE) with confident voxels (mean
    maximum softmax > 0.9: the predictions are not near-ties)."""
    images, truths = _training_cases(model, ["case_000", "case_003"])
    outputs = run_predictor(model, images, out, folds=folds)
    for output, truth in zip(outputs, truths):
        pred, gt = read_volume(output).array, read_volume(truth).array
        assert pred.shape == gt.shape
        for label in range(1, len(LABELS)):
            assert _dice(pred, gt, label) > LEARNED_DICE, (output.name, label)
        probabilities = np.load(output.with_name(output.name.replace(".nii.gz", ".npz")))
        assert probabilities["probabilities"].max(axis=0).mean() > 0.9


def test_3d_folder_is_complete(nnunet_model: Path, nnunet_builds: dict[str, float]) -> None:
    print(f"nnU-Net 3d_fullres fixture ready in {nnunet_builds['nnunet-3d']:.1f} s")
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth",
                 "fold_1/checkpoint_final.pth"):
        assert (nnunet_model / name).is_file(), name
    dataset = json.loads((nnunet_model / "dataset.json").read_text())
    assert dataset["labels"] == LABELS


def test_3d_plans_resample_every_case(nnunet_model: Path) -> None:
    """The planner's target spacing is none of the training cases' (each case is resampled)."""
    import nibabel as nib

    plans = json.loads((nnunet_model / "plans.json").read_text())
    target = np.array(plans["configurations"]["3d_fullres"]["spacing"])  # nnU-Net (z, y, x)
    images, _ = _training_cases(nnunet_model, [f"case_{i:03d}" for i in range(6)])
    for image in images:
        spacing_zyx = np.array(nib.load(image).header.get_zooms()[::-1])
        assert not np.allclose(spacing_zyx, target, atol=1e-3), image.name


def test_3d_model_learned_the_phantoms(nnunet_model: Path, tmp_path: Path) -> None:
    _check_learned(nnunet_model, (0, 1), tmp_path)


def test_2d_model_learned_the_phantoms(nnunet_model_2d: Path, nnunet_builds: dict[str, float],
                                       tmp_path: Path) -> None:
    print(f"nnU-Net 2d fixture ready in {nnunet_builds['nnunet-2d']:.1f} s")
    assert (nnunet_model_2d / "fold_0" / "checkpoint_final.pth").is_file()
    _check_learned(nnunet_model_2d, (0,), tmp_path)
