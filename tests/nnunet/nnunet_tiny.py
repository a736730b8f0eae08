"""Tiny nnU-Net v2 model folders for the nnunet tests, checkpoints written by nnU-Net's trainer.

The plans describe a 3-stage PlainConvUNet with 4-16 features; ``write_model_folder`` lays out
``<Trainer>__<Plans>__<configuration>/{plans.json,dataset.json,fold_k/checkpoint_final.pth}``
with checkpoints saved by nnunetv2's own ``nnUNetTrainer.save_checkpoint`` after one
optimiser step and a few epochs of logging, so they hold every type a real one holds.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ARCH_KWARGS = {
    "n_stages": 3, "features_per_stage": [4, 8, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}
ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": ARCH_KWARGS,
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
# The same network in the nnU-Net < 2.4 description (written by hand).
OLD_STYLE_ARCHITECTURE = {
    "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 4,
    "unet_max_num_features": 16, "n_conv_per_stage_encoder": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2], "num_pool_per_axis": [1, 2, 2],
    "pool_op_kernel_sizes": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
}
RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                  "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                 "force_separate_z": None},
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                           "force_separate_z": None},
}
CONFIGURATION = {
    "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
    "batch_size": 2, "patch_size": [16, 32, 32], "median_image_size_in_voxels": [16, 40, 40],
    "spacing": [2.5, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
    "use_mask_for_norm": [False], **RESAMPLING, "architecture": ARCHITECTURE,
    "batch_dice": False,
}
# A 2d configuration of the same network (3 stages, 2d convolutions).
CONFIGURATION_2D = {
    **copy.deepcopy(CONFIGURATION), "patch_size": [32, 32], "spacing": [1.0, 1.0],
    "architecture": {**copy.deepcopy(ARCHITECTURE), "arch_kwargs": {
        **copy.deepcopy(ARCHITECTURE["arch_kwargs"]),
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]]}},
}

PLANS = {
    "dataset_name": "Dataset001_Tiny", "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [2.5, 1.0, 1.0],
    "original_median_shape_after_transp": [16, 40, 40],
    "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
    "configurations": {"3d_fullres": CONFIGURATION},
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {
        "max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0, "percentile_00_5": 0.0,
        "percentile_99_5": 1.0, "std": 0.2}},
}
DATASET = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
           "numTraining": 6, "file_ending": ".nii.gz"}
MODEL_NAME = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def plans(configuration: dict | None = None, **configurations: dict) -> dict:
    """A deep copy of PLANS, its 3d_fullres replaced and further configurations added."""
    result = copy.deepcopy(PLANS)
    if configuration is not None:
        result["configurations"]["3d_fullres"] = copy.deepcopy(configuration)
    result["configurations"].update(copy.deepcopy(configurations))
    return result


def old_style_configuration() -> dict:
    """CONFIGURATION with its network described the nnU-Net < 2.4 way."""
    config = {k: v for k, v in copy.deepcopy(CONFIGURATION).items() if k != "architecture"}
    return {**config, **copy.deepcopy(OLD_STYLE_ARCHITECTURE)}


def save_trainer_checkpoint(path: Path, plans_: dict, dataset: dict, configuration: str,
                            fold: int | str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a checkpoint with nnU-Net's own trainer; return its network's state dict."""
    trainer_module = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    saved = os.environ.get("nnUNet_results")
    os.environ["nnUNet_results"] = str(path.parent / "nnunet_results")
    try:
        trainer = trainer_module.nnUNetTrainer({**copy.deepcopy(plans_),
                                                "continue_training": False},
                                               configuration, fold, dataset,
                                               device=torch.device("cpu"))
    finally:
        if saved is None:
            del os.environ["nnUNet_results"]
        else:
            os.environ["nnUNet_results"] = saved
    torch.manual_seed(seed)
    heads = trainer.label_manager.num_segmentation_heads
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, len(dataset["channel_names"]),
        heads, True)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    patch = trainer.configuration_manager.patch_size
    outputs = trainer.network(torch.rand(1, len(dataset["channel_names"]), *patch))
    sum(o.sum() for o in outputs).backward()
    trainer.optimizer.step()
    _log_epochs(trainer, epochs=2)
    trainer.inference_allowed_mirroring_axes = (0, 1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))
    return {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}


def _log_epochs(trainer, epochs: int) -> None:
    """Fill the trainer's log as training does (numpy and Python floats, timestamps)."""
    for epoch in range(epochs):
        trainer.logger.log("epoch_start_timestamps", time.time(), epoch)
        trainer.logger.log("train_losses", np.mean([0.5, 0.25]), epoch)
        trainer.logger.log("val_losses", np.mean([0.5, 0.75]), epoch)
        trainer.logger.log("lrs", 0.01, epoch)
        trainer.logger.log("mean_fg_dice", np.nanmean([0.5, 0.75]), epoch)
        trainer.logger.log("dice_per_class_or_region", [np.float64(0.5), 0.75], epoch)
        trainer.logger.log("epoch_end_timestamps", time.time(), epoch)
    trainer._best_ema = np.float64(0.6)


def write_model_folder(root: Path, plans_: dict | None = None, dataset: dict | None = None,
                       folds=(0, 1), name: str = MODEL_NAME) -> tuple[Path, dict]:
    """Write a trained-model folder; return it and {fold: state dict of that fold's network}."""
    plans_ = PLANS if plans_ is None else plans_
    dataset = DATASET if dataset is None else dataset
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans_))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    configuration = name.split("__")[-1] if name.count("__") == 2 else "3d_fullres"
    weights = {}
    for seed, fold in enumerate(folds):
        path = folder / f"fold_{fold}" / "checkpoint_final.pth"
        weights[str(fold)] = save_trainer_checkpoint(path, plans_, dataset, configuration,
                                                     fold, seed)
    return folder, weights
