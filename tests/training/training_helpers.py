"""Shared fixtures: tiny phantom datasets and pipeline configs (seconds on one CPU core)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from medseg.data.phantom import LABEL_NAMES, make_phantom

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"


def write_case(folder: Path, name: str, seed: int, shape=(24, 24, 16), spacing=(12.0, 12.0, 16.0)):
    from medseg.io import write_volume

    case = make_phantom(shape, spacing, seed=seed, noise_hu=10)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = folder / "imagesTr" / f"{name}.nii.gz"
    label = folder / "labelsTr" / f"{name}.nii.gz"
    write_volume(case.image, image)
    write_volume(case.label, label)
    return image, label, case


@pytest.fixture
def msd_dataset(tmp_path) -> Path:
    """An MSD dataset.json with 3 training and 1 validation phantom case."""
    entries = []
    for i in range(4):
        write_case(tmp_path, f"case{i}", seed=i)
        entries.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    doc = {
        "labels": {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}},
        "modality": {"0": "CT"},
        "training": entries[:3],
        "validation": entries[3:],
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(doc))
    return path


def tiny_config(**train_overrides) -> dict:
    train = {
        "epochs": 2, "batch_size": 2, "patch_size": [16, 16, 16], "iterations_per_epoch": 3,
        "lr": 0.01, "val_every": 1, "num_workers": 0, "seed": 0, "foreground_ratio": 0.5,
        "amp": False,
        "augment": {"enabled": True, "affine_prob": 0.5, "flip_prob": 0.5},
    }
    train.update(train_overrides)
    return {
        "data": {"phantom": {"n_train": 2, "n_val": 1, "shape": [24, 24, 16],
                             "spacing_mm": [12.0, 12.0, 16.0], "seed": 0, "noise_hu": 10}},
        "preprocessing": {"orientation": "RAS", "spacing_mm": None,
                          "intensity": {"mode": "ct", "window": [-200, 700]},
                          "crop_foreground": False},
        "model": {"name": "unet3d", "kwargs": {"depth": 2, "width": 4, "max_width": 8}},
        "loss": {"name": "dice_ce"},
        "train": train,
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "batch_size": 2},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def weights_of(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))
