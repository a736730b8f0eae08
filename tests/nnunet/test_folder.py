"""medseg.sources.nnunet.folder: model folders, folds, plans, labels and post-processing."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import CheckpointError, UsageError
from medseg.sources.nnunet.folder import NnunetFolder, regions_of
from medseg.sources.nnunet.load import NnunetSource
from nnunet.nnunet_tiny import (CONFIGURATION, DATASET, MODEL_NAME, old_style_configuration,
                                      plans, write_model_folder)

plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")
label_handling = pytest.importorskip("nnunetv2.utilities.label_handling.label_handling")
components = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")

REGION_DATASET = {"channel_names": {"0": "T1", "1": "T2"},
                  "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "active": 3},
                  "regions_class_order": [1, 2, 3], "numTraining": 6, "file_ending": ".nii.gz"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, dict]:
    """A 2-fold model folder whose checkpoints nnU-Net's trainer wrote."""
    return write_model_folder(tmp_path_factory.mktemp("results"))


@pytest.fixture()
def copy_of(model, tmp_path):
    """A writable copy of the model folder."""
    folder = tmp_path / "Dataset001_Tiny" / MODEL_NAME
    shutil.copytree(model[0], folder)
    return folder


def _error(call, *args, error=CheckpointError, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content))


def test_open_reads_the_folder_and_every_fold(model):
    folder_path, weights = model
    folder = NnunetFolder.open(folder_path)
    assert (folder.configuration, folder.trainer) == ("3d_fullres", "nnUNetTrainer")
    assert folder.folds == ("0", "1")
    assert folder.checkpoints == (folder_path / "fold_0" / "checkpoint_final.pth",
                                  folder_path / "fold_1" / "checkpoint_final.pth")
    assert folder.plans == json.loads((folder_path / "plans.json").read_text())
    assert folder.dataset == DATASET
    checkpoints = folder.read_checkpoints()
    assert [c.path for c in checkpoints] == list(folder.checkpoints)
    for fold, checkpoint in zip(folder.folds, checkpoints):
        assert all(torch.equal(checkpoint.weights[k], v) for k, v in weights[fold].items())
    first = list(weights["0"])[0]  # differently initialised per fold (seed)
    assert not torch.equal(checkpoints[0].weights[first], checkpoints[1].weights[first])


def test_fold_selection(copy_of):
    assert NnunetFolder.open(copy_of, folds=[1]).folds == ("1",)
    assert NnunetFolder.open(copy_of, folds=(1, "0")).folds == ("1", "0")
    assert NnunetFolder.open(copy_of, folds="all-available").folds == ("0", "1")
    # fold_all: used when named, and by the automatic choice only without numbered folds
    shutil.copytree(copy_of / "fold_0", copy_of / "fold_all")
    shutil.copytree(copy_of / "fold_1", copy_of / "fold_10")
    assert NnunetFolder.open(copy_of).folds == ("0", "1", "10")
    assert NnunetFolder.open(copy_of, folds="all").checkpoints == (
        copy_of / "fold_all" / "checkpoint_final.pth",)
    # the CLI's --folds text: "all" is fold_all (as nnUNetv2_predict -f all), None the default
    for text, expected in (("all", ("all",)), ("10, 0", ("10", "0")), (None, ("0", "1", "10"))):
        source = NnunetSource.parse(f"nnunet:{copy_of}", text)
        assert NnunetFolder.open(source.path, source.folds).folds == expected
    with pytest.raises(UsageError, match="expected distinct fold numbers"):
        NnunetFolder.open(copy_of, NnunetSource.parse(f"nnunet:{copy_of}", "0,x").folds)
    for fold in ("0", "1", "10"):
        shutil.rmtree(copy_of / f"fold_{fold}")
    assert NnunetFolder.open(copy_of).folds == ("all",)


def test_checkpoint_selection(copy_of):
    shutil.copy(copy_of / "fold_0" / "checkpoint_final.pth",
                copy_of / "fold_0" / "checkpoint_best.pth")
    best = NnunetFolder.open(copy_of, checkpoint="best")
    assert best.folds == ("0",)  # only fold 0 has a best checkpoint
    assert best.checkpoints == (copy_of / "fold_0" / "checkpoint_best.pth",)
    named = NnunetFolder.open(copy_of, folds=[0], checkpoint="checkpoint_best.pth")
    assert named.checkpoints == best.checkpoints
    message = _error(NnunetFolder.open, copy_of, folds=[1], checkpoint="best")
    assert "checkpoint_best.pth not found" in message and "checkpoint_final.pth" in message
    assert str(copy_of / "fold_1") in message
    assert "'latest'" in _error(NnunetFolder.open, copy_of, checkpoint="latest",
                                error=UsageError)
    assert "no fold_* folder holds checkpoint_x.pth" in _error(
        NnunetFolder.open, copy_of, checkpoint="checkpoint_x.pth")


def test_a_missing_fold_and_bad_fold_arguments(copy_of):
    message = _error(NnunetFolder.open, copy_of, folds=[0, 3])
    assert "fold '3' not found" in message and "0, 1" in message and str(copy_of) in message
    for bad in ([], ["x"], [0, 0], [-1]):
        _error(NnunetFolder.open, copy_of, folds=bad, error=UsageError)


def test_what_is_not_a_model_folder_is_named(copy_of, tmp_path):
    dataset_folder = copy_of.parent
    message = _error(NnunetFolder.open, dataset_folder)
    assert "a dataset folder" in message and MODEL_NAME in message
    assert str(dataset_folder) in message
    assert "fold_0" in _error(NnunetFolder.open, copy_of / "fold_0")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not an nnU-Net v2 model folder" in _error(NnunetFolder.open, empty)
    assert "not found" in _error(NnunetFolder.open, tmp_path / "absent")
    v1 = tmp_path / "nnUNetTrainerV2__nnUNetPlansv2.1"
    (v1 / "fold_0").mkdir(parents=True)
    (v1 / "plans.pkl").write_bytes(pickle.dumps({"plans_per_stage": {}}))
    assert "nnU-Net v1" in _error(NnunetFolder.open, v1)


def test_unknown_plans_formats_are_refused(copy_of):
    (copy_of / "plans.json").write_bytes(pickle.dumps({"configurations": {}}))
    message = _error(NnunetFolder.open, copy_of)
    assert "not a JSON file" in message and str(copy_of / "plans.json") in message
    _write_json(copy_of / "plans.json", {"plans_per_stage": {}})
    assert "unknown plans format: no 'configurations'" in _error(NnunetFolder.open, copy_of)
    no_architecture = {k: v for k, v in CONFIGURATION.items() if k != "architecture"}
    _write_json(copy_of / "plans.json", plans(no_architecture))
    assert "unknown plans format" in _error(NnunetFolder.open, copy_of)


def test_configurations_that_medseg_does_not_run(copy_of, tmp_path):
    lowres = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    cascade = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    missing = tmp_path / "nnUNetTrainer__nnUNetPlans__2d"
    plans_ = plans(**{"3d_lowres": {"inherits_from": "3d_fullres", "next_stage": "x"},
                      "3d_cascade_fullres": {"inherits_from": "3d_fullres",
                                             "previous_stage": "3d_lowres"}})
    for folder in (lowres, cascade, missing):
        shutil.copytree(copy_of, folder)
        _write_json(folder / "plans.json", plans_)
    assert "low-resolution or cascade" in _error(NnunetFolder.open, lowres)
    message = _error(NnunetFolder.open, cascade)
    assert "'3d_cascade_fullres'" in message and str(cascade / "plans.json") in message
    message = _error(NnunetFolder.open, missing)
    assert "configuration '2d' is not in the plans" in message and "'3d_lowres'" in message


def test_configuration_plans_resolve_inheritance_as_nnunet_does(copy_of, tmp_path):
    child = {"inherits_from": "3d_fullres", "batch_size": 4, "patch_size": [16, 16, 16]}
    grandchild = {"inherits_from": "3d_fullres_bs4", "spacing": [3.0, 1.0, 1.0]}
    plans_ = plans(**{"3d_fullres_bs4": child, "3d_fullres_deep": grandchild})
    folder_path = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres_deep"
    shutil.copytree(copy_of, folder_path)
    _write_json(folder_path / "plans.json", plans_)
    folder = NnunetFolder.open(folder_path)
    expected = plans_handler.PlansManager(plans_).get_configuration("3d_fullres_deep")
    assert folder.configuration_plans == expected.configuration
    assert folder.configuration_plans["batch_size"] == 4
    assert folder.configuration_plans["spacing"] == [3.0, 1.0, 1.0]
    circle = plans(**{"a": {"inherits_from": "b"}, "b": {"inherits_from": "a"}})
    _write_json(folder_path / "plans.json", {**circle, "configurations": {
        **circle["configurations"], "3d_fullres_deep": {"inherits_from": "a"}}})
    assert "inherit in a circle" in _error(NnunetFolder.open, folder_path)


def test_old_style_plans_are_mapped_as_nnunet_maps_them(copy_of):
    plans_ = plans(old_style_configuration())
    _write_json(copy_of / "plans.json", plans_)
    folder = NnunetFolder.open(copy_of)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = plans_handler.PlansManager(plans_).get_configuration("3d_fullres")
    assert folder.configuration_plans == expected.configuration
    assert folder.configuration_plans["architecture"] == CONFIGURATION["architecture"]


def _oracle_label_manager(dataset):
    return label_handling.LabelManager(dataset["labels"], dataset.get("regions_class_order"))


def test_channels_outputs_and_label_names(copy_of):
    folder = NnunetFolder.open(copy_of)
    manager = plans_handler.PlansManager(folder.plans)
    assert folder.num_inputs == label_handling.determine_num_input_channels(
        manager, "3d_fullres", DATASET) == 1
    assert folder.num_outputs == _oracle_label_manager(DATASET).num_segmentation_heads == 3
    assert folder.label_names() == {0: "background", 1: "liver", 2: "spleen"}
    assert regions_of(DATASET) is None
    ignore = {**DATASET, "labels": {**DATASET["labels"], "ignore": 3}}
    _write_json(copy_of / "dataset.json", ignore)
    folder = NnunetFolder.open(copy_of)
    assert folder.num_outputs == _oracle_label_manager(ignore).num_segmentation_heads == 3
    assert folder.label_names() == {0: "background", 1: "liver", 2: "spleen"}


def test_region_based_datasets(copy_of):
    _write_json(copy_of / "dataset.json", REGION_DATASET)
    folder = NnunetFolder.open(copy_of)
    oracle = _oracle_label_manager(REGION_DATASET)
    assert regions_of(REGION_DATASET) == ((1, 2, 3), (2, 3), (3,))
    assert list(regions_of(REGION_DATASET)) == [tuple(np.atleast_1d(r)) for r in
                                                 oracle.foreground_regions]
    assert folder.num_outputs == oracle.num_segmentation_heads == 3
    assert folder.num_inputs == 2
    assert folder.label_names() == {0: "background", 1: "whole", 2: "core", 3: "active"}
    reordered = {**REGION_DATASET, "regions_class_order": [3, 1, 2]}
    _write_json(copy_of / "dataset.json", reordered)
    assert NnunetFolder.open(copy_of).label_names() == {0: "background", 3: "whole",
                                                        1: "core", 2: "active"}
    _write_json(copy_of / "dataset.json", {**REGION_DATASET, "regions_class_order": [1, 2]})
    assert "regions_class_order" in _error(NnunetFolder.open, copy_of)
    _write_json(copy_of / "dataset.json", {**DATASET, "labels": {"liver": 1}})
    assert "no background" in _error(NnunetFolder.open, copy_of)


def test_a_checkpoint_of_another_configuration_is_refused(copy_of):
    path = copy_of / "fold_1" / "checkpoint_final.pth"
    content = torch.load(path, weights_only=False)
    content["init_args"]["configuration"] = "2d"
    torch.save(content, path)
    folder = NnunetFolder.open(copy_of)
    message = _error(folder.read_checkpoints)
    assert "'2d'" in message and str(path) in message


def test_a_folder_not_named_by_nnunet_takes_its_configuration_from_the_checkpoint(copy_of):
    renamed = copy_of.parent / "my_model"
    copy_of.rename(renamed)
    folder = NnunetFolder.open(renamed)
    assert (folder.configuration, folder.trainer) == ("3d_fullres", "nnUNetTrainer")


def _save_nnunet_postprocessing(folder: Path, kwargs: list[dict]) -> None:
    """postprocessing.pkl as nnU-Net's determine_postprocessing writes it."""
    functions = [components.remove_all_but_largest_component_from_segmentation] * len(kwargs)
    with open(folder / "postprocessing.pkl", "wb") as file:
        pickle.dump((functions, kwargs), file)


def test_postprocessing_from_nnunets_pickle(copy_of):
    folder = NnunetFolder.open(copy_of)
    assert folder.postprocessing() is None
    foreground = _oracle_label_manager(DATASET).foreground_labels  # numpy ints
    assert isinstance(foreground[0], np.integer)
    crossval = copy_of / "crossval_results_folds_0_1"
    crossval.mkdir()
    _save_nnunet_postprocessing(crossval, [{"labels_or_regions": foreground},
                                           {"labels_or_regions": 2}])
    assert folder.postprocessing() == [
        {"name": "remove_all_but_largest_component", "labels_or_regions": [1, 2]},
        {"name": "remove_all_but_largest_component", "labels_or_regions": [2]}]
    _save_nnunet_postprocessing(crossval, [{"labels_or_regions": [(1, 2, 3), (3,)]}])
    assert folder.postprocessing()[0]["labels_or_regions"] == [1, 2, 3]


def test_postprocessing_prefers_the_json_twin_and_refuses_unknown_steps(copy_of):
    folder = NnunetFolder.open(copy_of)
    _save_nnunet_postprocessing(copy_of, [{"labels_or_regions": 1}])
    _write_json(copy_of / "postprocessing.json", {
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": [1, 2]}]})
    assert folder.postprocessing() == [
        {"name": "remove_all_but_largest_component", "labels_or_regions": [1, 2]}]
    _write_json(copy_of / "postprocessing.json", {
        "postprocessing_fns": ["fill_holes"], "postprocessing_kwargs": [{}]})
    assert "unknown post-processing step 'fill_holes'" in _error(folder.postprocessing)
    (copy_of / "postprocessing.json").unlink()
    with open(copy_of / "postprocessing.pkl", "wb") as file:
        pickle.dump(([shutil.rmtree], [{"path": "/"}]), file)
    message = _error(folder.postprocessing)
    assert "'shutil.rmtree'" in message and str(copy_of / "postprocessing.pkl") in message


def test_postprocessing_of_other_folds_is_used_only_when_unambiguous(copy_of):
    folder = NnunetFolder.open(copy_of, folds=[0])
    only = copy_of / "crossval_results_folds_0_1_2_3_4"
    only.mkdir()
    _save_nnunet_postprocessing(only, [{"labels_or_regions": 1}])
    assert folder.postprocessing()[0]["labels_or_regions"] == [1]
    shutil.copytree(only, copy_of / "crossval_results_folds_1_2")
    assert folder.postprocessing() is None
    shutil.copytree(only, copy_of / "crossval_results_folds_0")
    assert folder.postprocessing() is not None


def test_configuration_plans_is_a_copy(copy_of):
    """Changing what configuration_plans returns leaves the folder's plans alone."""
    folder = NnunetFolder.open(copy_of)
    resolved = folder.configuration_plans
    resolved["patch_size"][0] = 999
    assert folder.plans["configurations"]["3d_fullres"]["patch_size"][0] == 16
    assert folder.configuration_plans["patch_size"][0] == 16
