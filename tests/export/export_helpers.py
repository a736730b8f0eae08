"""Helpers of the export tests: small seeded medseg models, the runner in a subprocess,
and the comparison with ``medseg predict`` (torch, fp32)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

#: The export formats and the engine each runner needs.
FORMATS = {"onnx": "onnxruntime", "openvino": "openvino"}


def needs_engine(fmt: str) -> None:
    """Skip unless the engine of export format ``fmt`` is installed."""
    import pytest

    if importlib.util.find_spec(FORMATS[fmt]) is None:
        pytest.skip(f"{FORMATS[fmt]} not installed (runs {fmt} exports)")


#: The runner's agreement with medseg predict (torch fp32): the issue's target.
MIN_AGREEMENT = 0.999
MAX_PROB_DIFF = 1e-3

PREPROCESSING = {"orientation": "RAS", "crop_foreground": True, "spacing_mm": [5.0, 5.5, 6.0],
                 "intensity": {"mode": "ct", "window": [-200, 300]}}


def save_model(path: Path, seed: int, mirror_axes=(), batch_size: int = 2) -> Path:
    """A seeded unet3d (depth 2, width 4, 3 classes) with medseg preprocessing that reorients,
    crops, resamples and windows CT, as a checkpoint. Its weights are the seed's (not
    trained): its probabilities are far from one-hot, so that blending, resampling and the
    ensemble rule all show in them."""
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.checkpoint import save_checkpoint

    net = models.create("unet3d", 1, 3, depth=2, width=4, seed=seed)
    card = ModelCard(NetworkSpec.of(net), PREPROCESSING, {1: "organ", 2: "lesion"},
                     WindowSettings((16, 16, 16), 0.5, "gaussian", batch_size,
                                    tuple(mirror_axes)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, net, card)


def write_phantom(path: Path, orientation: str = "LPS", oblique_deg: float = 10.0,
                  shape=(40, 36, 20)) -> Path:
    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume

    case = make_phantom(shape, (4.0, 4.5, 5.0), orientation=orientation, seed=3,
                        noise_hu=20.0, oblique_deg=oblique_deg)
    return write_volume(case.image, path)


def run_runner(folder: Path, image: Path, out: Path, *extra: str,
               python: str = sys.executable, isolated: bool = False
               ) -> subprocess.CompletedProcess:
    """``python folder/predict.py image out --probabilities out_probs.nii.gz extra...``;
    ``isolated``: without PYTHONPATH (so that nothing of this checkout is importable)."""
    env = clean_env() if isolated else None
    return subprocess.run([python, str(folder / "predict.py"), str(image), str(out),
                           "--probabilities", str(probabilities_path(out)), *extra],
                          capture_output=True, text=True, timeout=600, env=env)


def clean_env() -> dict[str, str]:
    """This process' environment without PYTHONPATH / PYTHONHOME."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def probabilities_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".nii.gz", "_probs.nii.gz"))


def read_runner_output(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (x, y, z), probabilities (K, x, y, z), affine) the runner wrote."""
    labels = nib.load(out)
    probs = np.moveaxis(np.asanyarray(nib.load(probabilities_path(out)).dataobj), -1, 0)
    return np.asarray(labels.dataobj), probs, labels.affine


def medseg_prediction(model, image: Path, tta=None):
    """``medseg predict``'s labels and probabilities (torch, fp32, CPU)."""
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.io import read_volume
    from medseg.runtime import Runtime

    return predict_case(model, read_volume(image),
                        PredictOptions(save_probabilities=True, tta=tta), Runtime.cpu())


def assert_agrees(out: Path, image: Path, reference, max_prob_diff: float = MAX_PROB_DIFF
                  ) -> tuple[float, float]:
    """The runner's outputs against medseg's: same shape, dtype rule and affine as the input,
    labels agreeing on >= 99.9 % of voxels, probabilities within ``max_prob_diff``; a
    mirrored output would fail the same test. Returns (agreement, max difference)."""
    labels, probs, affine = read_runner_output(out)
    source = nib.load(image)
    assert labels.shape == source.shape[:3] == reference.labels.shape
    np.testing.assert_allclose(affine, source.affine, atol=1e-5)
    assert labels.dtype == np.uint8
    agreement = float(np.mean(labels == reference.labels.array))
    diff = float(np.abs(probs - reference.probabilities.array).max())
    assert agreement >= MIN_AGREEMENT, agreement
    assert diff <= max_prob_diff, diff
    assert np.unique(reference.labels.array).size >= 2  # a comparison of more than background
    assert np.abs(probs[:, ::-1] - reference.probabilities.array).max() > 10 * max_prob_diff
    return agreement, diff
