"""Fold ensembles: loading (run folder, lists), card agreement, mean-softmax blending, geometry."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg import models
from medseg.card import WindowSettings
from medseg.checkpoint import save_checkpoint
from medseg.cli import main
from medseg.data.phantom import make_phantom
from medseg.errors import CheckpointError, UsageError
from medseg.sources import LoadedModel, load_model, run_checkpoints
from medseg.inference.precision import make_predictor
from medseg.inference.predict import PredictOptions, predict_case
from medseg.runtime import Runtime
from medseg.transforms.resample import as_tensor

from .predict_helpers import SLOPE, WINDOW, threshold_card, threshold_labels, threshold_unet
from .test_cli_predict import sitk_reference

CPU = Runtime.cpu()
RESAMPLING = {"spacing_mm": (5.0, 5.0, 6.0), "orientation": "RAS"}
SHIFT_HU = 30.0  # the two threshold members: every threshold lowered / raised by this
sw = importlib.import_module("medseg.inference.sliding_window")


def random_ckpt(path: Path, seed: int, **card) -> Path:
    """A random (not pointwise) U-Net: its windows disagree near their borders."""
    model = models.create("unet3d", 1, 3, depth=2, width=4, seed=seed).eval()
    card = {"roi": (16, 16, 8), "overlap": 0.5, **card}
    save_checkpoint(path, model, threshold_card(model, **card))
    return path


def shifted_ckpt(path: Path, shift_hu: float, **card) -> Path:
    """The threshold network with both thresholds moved by ``shift_hu`` (HU)."""
    model = threshold_unet()
    with torch.no_grad():
        model.head.bias += torch.tensor([SLOPE, 0.0, -SLOPE]) * shift_hu / (WINDOW[1] - WINDOW[0])
    save_checkpoint(path, model, threshold_card(model, **card))
    return path


def make_run(root: Path, checkpoints: list[Path], name: str = "best.safetensors") -> Path:
    for i, ckpt in enumerate(checkpoints):
        (root / f"fold_{i}").mkdir(parents=True)
        shutil.copy(ckpt, root / f"fold_{i}" / name)
    return root


def windowed(image) -> torch.Tensor:
    """The card's CT window [-100, 300] HU -> [0, 1], as (1, 1, x, y, z) float32."""
    unit = ((image.array - WINDOW[0]) / (WINDOW[1] - WINDOW[0])).clip(0, 1)
    return as_tensor(unit.astype(np.float32))[None, None]


# -- loading -------------------------------------------------------------------------------------
def test_run_folder_takes_best_else_last_in_fold_order(tmp_path, threshold_ckpt):
    run = tmp_path / "run"
    folds = {"fold_10": ["best"], "fold_2": ["last"], "fold_0": ["best", "last"]}
    for fold, names in folds.items():
        (run / fold).mkdir(parents=True)
        for name in names:
            shutil.copy(threshold_ckpt, run / fold / f"{name}.safetensors")
    (run / "cv").mkdir()
    assert run_checkpoints(run) == [run / "fold_0" / "best.safetensors",
                                    run / "fold_2" / "last.safetensors",
                                    run / "fold_10" / "best.safetensors"]
    loaded = load_model(run, CPU)
    assert len(loaded.networks) == 3 and loaded.is_ensemble
    assert loaded.card == load_model(threshold_ckpt, CPU).card


def test_run_folder_errors_name_the_folder(tmp_path, threshold_ckpt):
    with pytest.raises(CheckpointError, match=r"fold_\*/best.safetensors") as info:
        load_model(tmp_path, CPU)
    assert info.value.path == str(tmp_path)
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_1").mkdir()
    shutil.copy(threshold_ckpt, tmp_path / "fold_0" / "best.safetensors")
    with pytest.raises(CheckpointError, match="fold fold_1 holds neither best.safetensors"):
        load_model(tmp_path, CPU)
    with pytest.raises(UsageError, match="at least one checkpoint"):
        load_model([], CPU)


def test_single_run_folder_gives_its_best_else_last(tmp_path, threshold_ckpt):
    """``-m RUN_DIR`` of an ordinary (not cross-validated) training run: its own best, else
    last, checkpoint; one network, not an ensemble."""
    shutil.copy(threshold_ckpt, tmp_path / "last.safetensors")
    assert run_checkpoints(tmp_path) == [tmp_path / "last.safetensors"]
    shutil.copy(threshold_ckpt, tmp_path / "best.safetensors")
    assert run_checkpoints(tmp_path) == [tmp_path / "best.safetensors"]
    assert not load_model(tmp_path, CPU).is_ensemble


def test_loaded_model_one_network_or_several():
    net = threshold_unet()
    card = threshold_card(net)
    one = LoadedModel(net, card)
    assert one.networks == (net,) and one.network is net and not one.is_ensemble
    two = LoadedModel([net, threshold_unet()], card, "a, b")
    assert len(two.networks) == 2 and two.is_ensemble
    with pytest.raises(UsageError, match="ensemble of 2 networks"):
        _ = two.network
    with pytest.raises(UsageError, match="non-empty sequence"):
        LoadedModel((), card)


@pytest.mark.parametrize("card,setting", [
    ({"overlap": 0.25}, "window.overlap: 0.5 in .*a.safetensors, 0.25 in .*b.safetensors"),
    ({"mirror_axes": (0,)}, r"window.mirror_axes: \[\] in .*a.safetensors, \[0\] in"),
    ({"spacing_mm": (5.0, 5.0, 6.0)}, "preprocessing.spacing_mm: '<unset>' in .*a.safetensors"),
])
def test_mismatched_cards_one_line_naming_both_files(tmp_path, card, setting):
    a = random_ckpt(tmp_path / "a.safetensors", 0)
    b = random_ckpt(tmp_path / "b.safetensors", 1, **card)
    with pytest.raises(CheckpointError, match=f"ensemble members differ in {setting}") as info:
        load_model([a, b], CPU)
    assert "\n" not in str(info.value)


def test_mismatched_labels(tmp_path):
    from medseg.checkpoint import load_checkpoint

    a = random_ckpt(tmp_path / "a.safetensors", 0)
    other = load_checkpoint(a)
    net = other.build_model()
    save_checkpoint(tmp_path / "b.safetensors", net,
                    other.card.replace(labels={1: "liver", 2: "dense"}))
    with pytest.raises(CheckpointError, match="differ in labels: .*'soft_tissue'.*'liver'"):
        load_model([a, tmp_path / "b.safetensors"], CPU)


# -- what is blended -----------------------------------------------------------------------------
def test_ensemble_of_one_equals_the_model(tmp_path, phantom):
    ckpt = random_ckpt(tmp_path / "m.safetensors", 0)
    run = make_run(tmp_path / "run", [ckpt])
    image = phantom("LPS", 20.0).image
    options = PredictOptions(save_probabilities=True)
    single = predict_case(ckpt, image, options, CPU)
    folded = predict_case(run, image, options, CPU)
    np.testing.assert_allclose(folded.probabilities.array, single.probabilities.array, atol=1e-6)
    np.testing.assert_array_equal(folded.labels.array, single.labels.array)


@pytest.mark.parametrize("mirror_axes", [(), (0, 2)])
def test_two_models_blend_their_mean_softmax(tmp_path, phantom, mirror_axes):
    """The reference: medseg's sliding window over each member's softmax, then their mean."""
    settings = WindowSettings((16, 16, 8), 0.5, mirror_axes=mirror_axes)
    paths = [random_ckpt(tmp_path / f"m{s}.safetensors", s, mirror_axes=mirror_axes)
             for s in (0, 1)]
    image = phantom("RAS").image
    result = predict_case(paths, image, PredictOptions(save_probabilities=True), CPU)
    members = []
    for s in (0, 1):
        predictor = make_predictor(models.create("unet3d", 1, 3, depth=2, width=4, seed=s).eval(),
                                   CPU)
        softmax = (lambda p: lambda batch: torch.softmax(p(batch), dim=1))(predictor)
        members.append(sw.sliding_window(softmax, windowed(image), settings)[0])
    expected = ((members[0] + members[1]) / 2).numpy()
    np.testing.assert_allclose(result.probabilities.array, expected, atol=1e-6)
    # not what one network, nor softmax of blended mean probabilities, would give
    assert np.abs(members[0].numpy() - expected).max() > 1e-2
    assert np.abs(torch.softmax(torch.from_numpy(expected), 0).numpy() - expected).max() > 1e-2
    np.testing.assert_array_equal(result.labels.array, np.argmax(expected, axis=0))
    labels = predict_case(paths, image, runtime=CPU).labels  # the slab-wise argmax path
    np.testing.assert_array_equal(labels.array, np.argmax(expected, axis=0))


def test_labels_stay_slab_wise(tmp_path, phantom, monkeypatch):
    """Labels of an ensemble come from the slab-wise argmax, never the full (K, x, y, z) blend."""
    paths = [shifted_ckpt(tmp_path / f"m{i}.safetensors", d, **RESAMPLING)
             for i, d in enumerate((-SHIFT_HU, SHIFT_HU))]
    calls = []
    real = sw.sliding_window_argmax
    monkeypatch.setattr(sw, "sliding_window", lambda *a, **k: pytest.fail("full blend"))
    monkeypatch.setattr(sw, "sliding_window_argmax",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    case = phantom("LPS", 25.0)
    labels = predict_case(paths, case.image, PredictOptions(label_interp="nearest"), CPU).labels
    assert calls == [1]
    assert labels.shape == case.image.shape
    np.testing.assert_array_equal(labels.affine, case.image.affine)


# -- geometry and accuracy -----------------------------------------------------------------------
@pytest.mark.parametrize("orientation,oblique", [("LPS", 0.0), ("LPS", 25.0), ("PIR", 10.0)])
def test_ensemble_keeps_the_input_grid(tmp_path, phantom, orientation, oblique):
    paths = [shifted_ckpt(tmp_path / f"m{i}.safetensors", d, **RESAMPLING)
             for i, d in enumerate((-SHIFT_HU, SHIFT_HU))]
    case = phantom(orientation, oblique)
    result = predict_case(make_run(tmp_path / "run", paths), case.image,
                          PredictOptions(save_probabilities=True), CPU)
    for out in (result.labels, result.probabilities):
        assert out.shape[-3:] == case.image.shape
        np.testing.assert_array_equal(out.affine, case.image.affine)
    np.testing.assert_allclose(result.probabilities.array.sum(axis=0), 1.0, atol=1e-5)
    agreement = (result.labels.array == threshold_labels(case.image.array)).mean()
    assert agreement > 0.9, agreement


def dice_mean(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground classes 1 and 2 (hand formula)."""
    return float(np.mean([2 * np.sum((pred == k) & (truth == k))
                          / (np.sum(pred == k) + np.sum(truth == k)) for k in (1, 2)]))


def test_ensemble_dice_at_least_its_members_mean(tmp_path):
    """Held-out phantoms (unseen seeds); truth: the thresholds applied to the noise-free image.
    One member segments too much, the other too little; their mean softmax does neither."""
    paths = [shifted_ckpt(tmp_path / f"m{i}.safetensors", d)
             for i, d in enumerate((-SHIFT_HU, SHIFT_HU))]
    scores: dict[str, list[float]] = {"ensemble": [], "m0": [], "m1": []}
    for seed in (21, 22):
        noisy = make_phantom((40, 36, 20), (4.0, 4.5, 5.0), "LPS", seed, noise_hu=20.0)
        clean = make_phantom((40, 36, 20), (4.0, 4.5, 5.0), "LPS", seed, noise_hu=0.0)
        np.testing.assert_array_equal(noisy.label.array, clean.label.array)
        truth = threshold_labels(clean.image.array)
        for name, model in (("ensemble", paths), ("m0", paths[0]), ("m1", paths[1])):
            labels = predict_case(model, noisy.image, runtime=CPU).labels.array
            scores[name].append(dice_mean(labels, truth))
    members = [np.mean(scores["m0"]), np.mean(scores["m1"])]
    assert np.mean(scores["ensemble"]) >= np.mean(members)
    assert np.mean(scores["ensemble"]) > max(members), scores


# -- the command line ----------------------------------------------------------------------------
def predict(*args) -> int:
    return main(["-q", "predict", *map(str, args), "--device", "cpu"])


def test_cli_run_folder_repeated_and_comma_list_agree(tmp_path, phantom):
    paths = [shifted_ckpt(tmp_path / f"m{i}.safetensors", d, **RESAMPLING)
             for i, d in enumerate((-SHIFT_HU, SHIFT_HU))]
    run = make_run(tmp_path / "run", paths, "last.safetensors")
    case = phantom("LPS", 15.0)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.image.array, case.image.affine), src)
    outs = {}
    for name, model_args in {"run": ["-m", run], "repeated": ["-m", paths[0], "-m", paths[1]],
                             "comma": ["-m", f"{paths[0]},{paths[1]}"]}.items():
        outs[name] = tmp_path / f"{name}.nii.gz"
        assert predict(*model_args, "-i", src, "-o", outs[name]) == 0
    arrays = {name: nib.load(path) for name, path in outs.items()}
    for image in arrays.values():
        assert image.shape == case.image.shape
        np.testing.assert_allclose(image.affine, case.image.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(image.dataobj),
                                      np.asarray(arrays["run"].dataobj))
    single = tmp_path / "single.nii.gz"
    assert predict("-m", paths[0], "-i", src, "-o", single) == 0
    assert not np.array_equal(np.asarray(nib.load(single).dataobj),
                              np.asarray(arrays["run"].dataobj))


def test_cli_mismatched_members_one_line(tmp_path, capsys, phantom, threshold_ckpt,
                                         resampling_ckpt):
    case = phantom("RAS")
    src, out = tmp_path / "ct.nii.gz", tmp_path / "o.nii.gz"
    nib.save(nib.Nifti1Image(case.image.array, case.image.affine), src)
    assert predict("-m", threshold_ckpt, "-m", resampling_ckpt, "-i", src, "-o", out) != 0
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{threshold_ckpt}" in err[0] and f"{resampling_ckpt}" in err[0]
    assert "differ in preprocessing.orientation" in err[0]


def test_cli_dicom_series(tmp_path, ct_dicom):
    paths = [shifted_ckpt(tmp_path / f"m{i}.safetensors", d, **RESAMPLING)
             for i, d in enumerate((-SHIFT_HU, SHIFT_HU))]
    out = tmp_path / "ct.nii.gz"
    assert predict("-m", make_run(tmp_path / "run", paths), "-i", ct_dicom, "-o", out) == 0
    hu, affine = sitk_reference(ct_dicom)
    pred = nib.load(out)
    assert pred.shape == hu.shape
    np.testing.assert_allclose(pred.affine, affine, atol=1e-4)
    agreement = (np.asarray(pred.dataobj) == threshold_labels(hu)).mean()
    assert agreement > 0.9, agreement
