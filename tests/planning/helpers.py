"""Small hand-written datasets of known geometry for the planning tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.io import write_volume
from medseg.volume import Volume, affine_from


def box_case(shape, seed: int, n_channels: int = 1, means=(100.0, 300.0)):
    """Images (C, x, y, z) of Gaussian noise (mean ``means[c]`` inside a box, 0 outside),
    and a label: 1 in the box, 2 in a corner voxel block."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    box = tuple(slice(s // 4, s // 4 + max(2, s // 2)) for s in shape)
    label[box] = 1
    label[:2, :2, :2] = 2
    image = np.zeros((n_channels, *shape), np.float32)
    for c in range(n_channels):
        image[c][label > 0] = rng.normal(means[c], 20.0, int((label > 0).sum()))
    return image, label


def write_dataset(folder: Path, spacings, shape, channel_names=("MR",), labels=None,
                  channels_per_case=None) -> Path:
    """One case per spacing (x, y, z mm), one file per channel; returns dataset.json."""
    folder.mkdir(parents=True, exist_ok=True)
    training = []
    for i, spacing in enumerate(spacings):
        n = len(channel_names) if channels_per_case is None else channels_per_case[i]
        image, label = box_case(shape, i, n)
        affine = affine_from(spacing)
        names = []
        for c in range(n):
            names.append(f"imagesTr/case{i}_{c:04d}.nii.gz")
            write_volume(Volume(image[c], affine), folder / names[-1])
        write_volume(Volume(label, affine), folder / f"labelsTr/case{i}.nii.gz")
        training.append({"image": names if n > 1 else names[0],
                         "label": f"labelsTr/case{i}.nii.gz"})
    doc = {"modality": {str(c): n for c, n in enumerate(channel_names)},
           "labels": labels or {"0": "background", "1": "box", "2": "corner"},
           "training": training}
    (folder / "dataset.json").write_text(json.dumps(doc))
    return folder / "dataset.json"
