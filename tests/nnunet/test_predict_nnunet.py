"""``medseg predict -m nnunet:FOLDER`` against nnunetv2's own ``nnUNetPredictor``.

Same model folder, same image file: medseg's probabilities (K, x, y, z) equal the
predictor's exported ``.npz`` (K, z, y, x) within 1e-4 and the labels agree, for one fold and
a 2-fold ensemble, mirroring on and off, on RAS, LPS and oblique images with anisotropic
spacing; a mirrored or transposed output fails the same comparison. The networks here are
untrained (fast); tests/nnunet/test_trained_nnunet.py repeats the check on a trained model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.inference.predict import PredictOptions, predict_case
from medseg.io import read_volume
from medseg.runtime import Runtime
from nnunet.nnunet_tiny import CONFIGURATION, CONFIGURATION_2D, plans, write_model_folder

predict_raw = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")


def untrained(folder: Path, configuration: dict, folds, mirror_axes) -> Path:
    """Re-initialise the folds of a tiny model folder with untrained weights (the folder's
    own one-step weights overflow nnU-Net's float16 accumulator)."""
    from medseg.models.nnunet_network import build_network

    for fold in folds:
        path = folder / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint = torch.load(path, weights_only=False)  # our own file: trusted
        torch.manual_seed(fold)
        state = build_network(configuration, 1, 3).state_dict()
        checkpoint["network_weights"] = {k: v * 2 if v.is_floating_point() else v
                                         for k, v in state.items()}
        checkpoint["inference_allowed_mirroring_axes"] = mirror_axes
        torch.save(checkpoint, path)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder, _ = write_model_folder(tmp_path_factory.mktemp("nnunet"))
    return untrained(folder, CONFIGURATION, (0, 1), (0, 1, 2))


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory) -> Path:
    folder, _ = write_model_folder(tmp_path_factory.mktemp("nnunet2d"),
                                   plans(**{"2d": CONFIGURATION_2D}), folds=(0,),
                                   name="nnUNetTrainer__nnUNetPlans__2d")
    return untrained(folder, CONFIGURATION_2D, (0,), (0, 1))


def blob_image(path: Path, affine: np.ndarray, shape=(45, 37, 14), seed=0) -> Path:
    """A smooth blob plus noise, float32, written as NIfTI with ``affine``."""
    grid = np.mgrid[tuple(slice(0, n) for n in shape)].astype(np.float32)
    centre = [n / 2 for n in shape]
    blob = np.exp(-sum((g - c) ** 2 / (n * n / 8) for g, c, n in zip(grid, centre, shape)))
    noise = 0.05 * np.random.default_rng(seed).normal(size=shape)
    nib.save(nib.Nifti1Image((blob + noise).astype(np.float32), affine), path)
    return path


def affine(orientation: str) -> np.ndarray:
    """RAS / LPS / oblique (25 degrees about z), 0.8 x 0.9 x 2.0 mm voxels."""
    a = np.diag([0.8, 0.9, 2.0, 1.0])
    if orientation == "LPS":
        a[:3, :3] = np.diag([-0.8, -0.9, 2.0])
    if orientation == "oblique":
        t = np.deg2rad(25)
        rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
        a[:3, :3] = rot @ np.diag([0.8, 0.9, 2.0])
    a[:3, 3] = [10.0, -5.0, 3.0]
    return a


def nnunet_predict(folder: Path, image: Path, out: Path, folds, mirroring: bool):
    """nnUNetPredictor's labels (x, y, z) and probabilities (K, x, y, z) for ``image``."""
    out.mkdir(parents=True, exist_ok=True)
    predictor = predict_raw.nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=mirroring, perform_everything_on_device=False,
        device=torch.device("cpu"), verbose=False, verbose_preprocessing=False,
        allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds,
                                                   checkpoint_name="checkpoint_final.pth")
    predictor.predict_from_files_sequential([[str(image)]], [str(out / "case")], True, True,
                                            None)
    labels = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    probabilities = np.load(out / "case.npz")["probabilities"].transpose(0, 3, 2, 1)
    return labels, probabilities


@pytest.mark.parametrize("orientation,folds,mirroring", [
    ("RAS", (0,), False), ("LPS", (0, 1), True), ("oblique", (0, 1), False),
    ("oblique", (1,), True)])
def test_probabilities_and_labels_are_nnunets(model, tmp_path, orientation, folds, mirroring):
    torch.set_num_threads(1)
    image = blob_image(tmp_path / "case_0000.nii.gz", affine(orientation))
    labels, probabilities = nnunet_predict(model, image, tmp_path / "nnunet", folds, mirroring)
    options = PredictOptions(save_probabilities=True, tta=mirroring)
    source = f"nnunet:{model}"
    from medseg.sources.nnunet.load import NnunetSource

    ours = predict_case(NnunetSource.parse(source, folds), read_volume(image), options,
                        Runtime.resolve("cpu"))
    assert ours.probabilities.shape == probabilities.shape
    assert np.abs(ours.probabilities.array - probabilities).max() <= 1e-4
    assert np.array_equal(ours.labels.array, labels)
    assert np.allclose(ours.labels.affine, nib.load(image).affine)
    # the same comparison fails for a mirrored or transposed output
    assert np.abs(ours.probabilities.array[:, ::-1] - probabilities).max() > 1e-2
    assert np.abs(ours.probabilities.array[:, :37, :37].transpose(0, 2, 1, 3)
                  - probabilities[:, :37, :37]).max() > 1e-2


@pytest.mark.parametrize("orientation,mirroring", [("LPS", True), ("oblique", False)])
def test_2d_model_is_nnunets(model_2d, tmp_path, orientation, mirroring):
    torch.set_num_threads(1)
    image = blob_image(tmp_path / "case_0000.nii.gz", affine(orientation))
    labels, probabilities = nnunet_predict(model_2d, image, tmp_path / "nnunet", (0,),
                                           mirroring)
    ours = predict_case(f"nnunet:{model_2d}", read_volume(image),
                        PredictOptions(save_probabilities=True, tta=mirroring),
                        Runtime.resolve("cpu"))
    assert np.abs(ours.probabilities.array - probabilities).max() <= 1e-4
    assert np.array_equal(ours.labels.array, labels)


def test_import_gives_the_folders_labels(model, tmp_path):
    """``medseg import`` then ``predict -m model.safetensors`` == ``predict -m nnunet:``."""
    torch.set_num_threads(1)
    image = blob_image(tmp_path / "ct.nii.gz", affine("LPS"))
    imported = tmp_path / "out" / "model.safetensors"
    assert main(["import", f"nnunet:{model}", "-o", str(imported)]) == 0
    assert main(["predict", "-m", f"nnunet:{model}", "-i", str(image), "-o",
                 str(tmp_path / "a.nii.gz"), "--device", "cpu"]) == 0
    assert main(["predict", "-m", str(imported), "-i", str(image), "-o",
                 str(tmp_path / "b.nii.gz"), "--device", "cpu"]) == 0
    a = read_volume(tmp_path / "a.nii.gz")
    b = read_volume(tmp_path / "b.nii.gz")
    assert np.array_equal(a.array, b.array)
    assert a.same_grid(read_volume(image))
    from medseg.checkpoint import load_checkpoint

    card = load_checkpoint(imported).card
    assert card.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert card.model.options["folds"] == 2
    assert card.window.roi_size == (32, 32, 16) and card.window.blend == "nnunet"


def test_one_fold_selected_on_the_command_line(model, tmp_path):
    torch.set_num_threads(1)
    image = blob_image(tmp_path / "case_0000.nii.gz", affine("RAS"))
    labels, _ = nnunet_predict(model, image, tmp_path / "nnunet", (1,), True)
    out = tmp_path / "ours.nii.gz"
    assert main(["predict", "-m", f"nnunet:{model}", "--folds", "1", "-i", str(image), "-o",
                 str(out), "--device", "cpu"]) == 0
    assert np.array_equal(read_volume(out).array, labels)


def test_image_with_other_channel_count_is_one_line(model, tmp_path, capsys):
    image = tmp_path / "two.nii.gz"
    data = np.zeros((20, 20, 8, 2), np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), image)
    assert main(["-q", "predict", "-m", f"nnunet:{model}", "-i", str(image), "-o",
                 str(tmp_path / "x.nii.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "two.nii.gz" in err and "channels" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_missing_fold_is_one_line(model, tmp_path, capsys):
    image = blob_image(tmp_path / "ct.nii.gz", affine("RAS"))
    assert main(["-q", "predict", "-m", f"nnunet:{model}", "--folds", "3", "-i", str(image),
                 "-o", str(tmp_path / "x.nii.gz")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fold '3' not found" in err and str(model) in err


def test_copy_without_plans_is_not_a_model(model, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "plans.json").unlink()
    assert main(["-q", "import", f"nnunet:{broken}", "-o", str(tmp_path / "m.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken" in err and "plans.json" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_union_step_equals_nnunets_function():
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as theirs)

    from medseg.inference.postprocess import keep_largest_of_union

    rng = np.random.default_rng(5)
    for trial in range(20):
        labels = (rng.random((14, 12, 9)) < 0.25).astype(np.uint8) * rng.integers(
            1, 4, (14, 12, 9)).astype(np.uint8)
        for group in [(1,), (1, 2), (1, 2, 3)]:
            expected = theirs(labels, list(group) if len(group) > 1 else group[0])
            assert np.array_equal(keep_largest_of_union(labels, group), expected), (trial, group)


def test_folder_postprocessing_is_applied_as_nnunet_applies_it(model, tmp_path):
    """A postprocessing.pkl written with nnU-Net's own function references: medseg's labels
    equal nnU-Net's labels after nnU-Net's apply_postprocessing."""
    import pickle

    from nnunetv2.postprocessing import remove_connected_components as rcc

    folder = tmp_path / model.name
    shutil.copytree(model, folder)
    steps = [rcc.remove_all_but_largest_component_from_segmentation] * 2
    kwargs = [{"labels_or_regions": [1, 2]}, {"labels_or_regions": 2}]
    (folder / "postprocessing.pkl").write_bytes(pickle.dumps((steps, kwargs)))
    image = blob_image(tmp_path / "case_0000.nii.gz", affine("LPS"), seed=3)
    labels, _ = nnunet_predict(folder, image, tmp_path / "nnunet", (0,), False)
    expected = rcc.apply_postprocessing(labels, steps, kwargs)
    assert not np.array_equal(expected, labels)  # the steps change this prediction
    out = tmp_path / "ours.nii.gz"
    assert main(["-q", "predict", "-m", f"nnunet:{folder}", "--folds", "0", "--no-tta", "-i",
                 str(image), "-o", str(out), "--device", "cpu"]) == 0
    assert np.array_equal(read_volume(out).array, expected)
    # --no-keep-largest drops the folder's steps: nnU-Net's labels without post-processing
    assert main(["-q", "predict", "-m", f"nnunet:{folder}", "--folds", "0", "--no-tta",
                 "--no-keep-largest", "-i", str(image), "-o", str(out), "--device", "cpu"]) == 0
    assert np.array_equal(read_volume(out).array, labels)


def test_keep_largest_options_keep_the_cards_other_steps():
    from medseg.card import ModelCard, NetworkSpec, Postprocess, WindowSettings

    card = ModelCard(NetworkSpec("unet", 1, 3), {}, {0: "bg", 1: "a", 2: "b"},
                     WindowSettings((16, 16, 16)),
                     Postprocess(min_size_ml={2: 0.5}, largest_of=((1, 2),)))
    on = PredictOptions(keep_largest=True).apply(card).postprocess
    off = PredictOptions(keep_largest=False).apply(card).postprocess
    assert (on.keep_largest, dict(on.min_size_ml), on.largest_of) == (True, {2: 0.5}, ((1, 2),))
    assert (off.keep_largest, dict(off.min_size_ml), off.largest_of) == (False, {2: 0.5}, ())
    assert PredictOptions().apply(card).postprocess == card.postprocess


def test_save_probabilities_gives_the_same_labels(model, tmp_path):
    """Labels made from the exported probabilities (one pass) equal the labels path."""
    image = read_volume(blob_image(tmp_path / "case_0000.nii.gz", affine("oblique"), seed=4))
    cpu = Runtime.resolve("cpu")
    both = predict_case(f"nnunet:{model}", image, PredictOptions(save_probabilities=True,
                                                                 tta=False), cpu)
    plain = predict_case(f"nnunet:{model}", image, PredictOptions(tta=False), cpu)
    assert np.array_equal(both.labels.array, plain.labels.array)
    assert len(np.unique(plain.labels.array)) > 1
    assert np.array_equal(both.labels.array, np.argmax(both.probabilities.array, axis=0))


def test_nearest_label_interp_is_refused_in_one_line(model, tmp_path, capsys):
    image = blob_image(tmp_path / "ct.nii.gz", affine("RAS"))
    assert main(["-q", "predict", "-m", f"nnunet:{model}", "--label-interp", "nearest", "-i",
                 str(image), "-o", str(tmp_path / "x.nii.gz")]) == 2  # a usage error
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "label_interp='nearest'" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_dicom_series_in_dicom_seg_out(model, tmp_path):
    """A real CT DICOM series: medseg reads it itself; the oracle is nnUNetPredictor on the
    same series written to NIfTI by SimpleITK. Labels equal on the series' own grid, and the
    DICOM-SEG written from them reads back to the same regions (segment numbers 1..n)."""
    import SimpleITK as sitk

    from medseg.io.labels import read_labels

    series = Path(__file__).resolve().parents[2].parent / "shared" / "data" / \
        "totalsegmentator" / "ct_dicom"
    if not series.is_dir():
        pytest.skip(f"real CT DICOM series not available at {series}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    nifti = tmp_path / "ct_0000.nii.gz"
    sitk.WriteImage(reader.Execute(), str(nifti))
    labels, _ = nnunet_predict(model, nifti, tmp_path / "nnunet", (0,), False)
    seg, nii = tmp_path / "out" / "ct.dcm", tmp_path / "out" / "ct.nii.gz"
    for out in (seg, nii):
        assert main(["-q", "predict", "-m", f"nnunet:{model}", "--folds", "0", "--no-tta",
                     "-i", str(series), "-o", str(out), "--device", "cpu"]) == 0
    ours = read_volume(nii)
    assert np.array_equal(ours.array, labels)
    assert np.unique(labels).size > 1  # something was segmented
    back = read_labels(seg, reference=series).array  # segments are numbered 1..n as written
    pairs = np.unique(np.stack([back.ravel(), labels.ravel().astype(back.dtype)]), axis=1)
    assert pairs.shape[1] == np.unique(labels).size  # one segment per label, same voxels
    assert np.array_equal(back > 0, labels > 0)
