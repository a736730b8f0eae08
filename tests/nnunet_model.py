"""A real trained nnU-Net v2 model on medseg phantoms, and nnU-Net's own predictor as an oracle.

Test-only: this module drives ``nnunetv2`` (planning, preprocessing, training,
prediction) in-process; medseg itself never imports it. Used by the fixtures in
``tests/nnunet/conftest.py`` and by ``benchmarks/bench_nnunet.py`` (which puts
``tests/`` on ``sys.path``)::

    results = build_model(Path("cache"))                 # cached after the first call
    folder = results / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    image, label = write_phantom_case(tmp, "case", orientation="LPS")
    run_predictor(folder, [image], tmp / "out", folds=(0, 1))

The model is nnU-Net's default ``nnUNetTrainer`` with a short schedule (its
epoch and iteration counts set on the instance, as nnU-Net's own
``nnUNetTrainer_Xepochs`` variants set them in ``__init__``), so the folder,
the checkpoints and their ``trainer_name`` are exactly those of an
``nnUNetv2_train`` run and ``nnUNetPredictor`` loads them unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from medseg.data.phantom import make_phantom
from medseg.io import write_volume
from medseg.io.atomic import atomic_write_text
from medseg.volume import Volume

__all__ = ["DATASET", "LABELS", "TRAINER", "build_model", "console_to", "model_folder",
           "new_trainer", "nnunet_env", "phantom_labels", "plan_and_preprocess", "run_predictor",
           "write_phantom_case"]

DATASET = "Dataset901_MedsegPhantom"
TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
#: The model's labels (dataset.json form): the phantom's liver, spleen and both kidneys.
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidneys": 3}
#: medseg phantom label -> model label (the aorta, 5, is left to the background).
_PHANTOM_TO_MODEL = np.array([0, 1, 2, 3, 3, 0], dtype=np.uint8)
_ITERATIONS_PER_EPOCH = 10
# nnU-Net's 0.01 needs ~1000 steps to find the spleen and kidneys; 0.05 needs 150.
_INITIAL_LR = 0.05
_NOISE_HU = 8.0  # low enough that a short training separates the organs by intensity
_FORMAT = 1  # bump when the build changes, so old caches are rebuilt
_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA",
        "nnUNet_compile", "nnUNet_wandb_enabled")


def build_model(root: Path, *, configurations: Sequence[str] = ("3d_fullres",),
                folds: Sequence[int] = (0, 1), spacing: Sequence[float] = (1.0, 1.0, 2.5),
                shape: Sequence[int] = (40, 40, 16), cases: int = 6, iterations: int = 150,
                seed: int = 0) -> Path:
    """Plan, preprocess and train an nnU-Net v2 model on phantoms; return its results folder.

    Parameters
    ----------
    root : folder holding ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``,
        ``build.log`` (nnU-Net's console output) and ``key.json`` (the cache key).
    configurations : nnU-Net configurations to train: ``"3d_fullres"`` and/or ``"2d"``.
        ``3d_fullres`` trains every fold of ``folds``; ``2d`` trains only ``folds[0]``.
    folds : folds of nnU-Net's own 5-fold split (so ``cases >= 5``).
    spacing : nominal (x, y, z) voxel size in mm. Case ``i`` is scaled by a factor in
        [0.85, 1.15] so the planner's median target spacing differs from every case's
        (nnU-Net resamples each one).
    shape : (x, y, z) voxels of each case.
    cases : number of training cases ``case_000`` ... (seeds ``seed``, ``seed + 1`` ...).
    iterations : optimiser steps per fold (epochs of 10 steps; SGD from learning rate 0.05,
        nnU-Net's poly schedule).
    seed : phantom and training seed.

    Returns
    -------
    ``root/nnUNet_results/Dataset901_MedsegPhantom``; its model folders are
    ``nnUNetTrainer__nnUNetPlans__<configuration>`` (see :func:`model_folder`).

    Notes
    -----
    Cached: a second call with the same arguments and the same nnunetv2 version
    returns at once. Concurrent calls (pytest-xdist workers) wait on a lock file
    in ``root``; a build that fails leaves no key, so the next call starts over.
    nnU-Net's fingerprinting and preprocessing run in ``spawn`` worker processes, which
    import the caller's ``__main__``: a script calling this needs an
    ``if __name__ == "__main__":`` guard (without one the worker waits on the lock forever).
    """
    from importlib.metadata import version

    root = Path(root)
    key = {"format": _FORMAT, "nnunetv2": version("nnunetv2"),
           "configurations": list(configurations), "folds": [int(f) for f in folds],
           "spacing": [float(s) for s in spacing], "shape": [int(s) for s in shape],
           "cases": int(cases), "iterations": int(iterations), "seed": int(seed)}
    results = root / "nnUNet_results" / DATASET
    with _locked(root):
        if _cached(root, key):
            return results
        for stale in ("key.json", "build.log"):
            (root / stale).unlink(missing_ok=True)
        for part in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            shutil.rmtree(root / part, ignore_errors=True)
        with nnunet_env(root), console_to(root / "build.log"):
            _write_raw(root / "nnUNet_raw" / DATASET, key)
            plan_and_preprocess(int(DATASET[7:10]), configurations)
            for configuration in configurations:
                for fold in folds if configuration == "3d_fullres" else folds[:1]:
                    _train(configuration, int(fold), int(iterations), int(seed))
        atomic_write_text(root / "key.json", json.dumps(key, indent=1))
    return results


def model_folder(results: Path, configuration: str = "3d_fullres") -> Path:
    """The model folder of ``configuration`` in the results folder of :func:`build_model`."""
    return Path(results) / f"{TRAINER}__{PLANS}__{configuration}"


def run_predictor(model_folder: Path, images: list[Path], out_dir: Path, *, folds: Sequence,
                  checkpoint: str = "checkpoint_final.pth", mirroring: bool = True,
                  save_probabilities: bool = True) -> list[Path]:
    """Predict image files with nnU-Net's ``nnUNetPredictor`` on the CPU, in this process.

    Parameters
    ----------
    model_folder : an nnU-Net v2 trained-model folder (``plans.json``, ``fold_*/``).
    images : single-channel image files; ``<name>_0000.nii.gz`` gives output ``<name>``.
    out_dir : output folder (created).
    folds : folds to ensemble (ints, or ``"all"``).
    checkpoint : checkpoint file name in each fold folder.
    mirroring : test-time mirroring over the model's allowed axes.
    save_probabilities : also write ``<name>.npz`` (key ``probabilities``) and ``<name>.pkl``.

    Returns
    -------
    The label files, in the order of ``images`` (``out_dir/<name>.nii.gz``).
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [_case_of(Path(p)) for p in images]
    with console_to(out_dir / "nnunet_predict.log"):
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                    use_mirroring=mirroring, perform_everything_on_device=False,
                                    device=torch.device("cpu"), verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds),
                                                       checkpoint_name=checkpoint)
        predictor.predict_from_files_sequential([[str(p)] for p in images],
                                                [str(out_dir / n) for n in names],
                                                save_probabilities=save_probabilities,
                                                overwrite=True)
    return [out_dir / f"{n}.nii.gz" for n in names]


def phantom_labels(label: Volume) -> Volume:
    """The model's label map (:data:`LABELS`) of a medseg phantom label map, same grid."""
    return Volume(_PHANTOM_TO_MODEL[np.asarray(label.array)], label.affine, dict(label.meta))


def write_phantom_case(folder: Path, name: str, *, shape: Sequence[int] = (40, 40, 16),
                       spacing: Sequence[float] = (1.0, 1.0, 2.5), seed: int = 100,
                       orientation: str = "RAS", oblique_deg: float = 0.0) -> tuple[Path, Path]:
    """Write a phantom as ``folder/<name>_0000.nii.gz``, its model labels as ``<name>_gt.nii.gz``.

    ``shape`` (x, y, z voxels), ``spacing`` (x, y, z mm), ``orientation`` (axis codes, e.g.
    ``"LPS"``) and ``oblique_deg`` (rotation about S) as in
    :func:`medseg.data.phantom.make_phantom`.
    Returns (image path, label path).
    """
    case = make_phantom(shape, spacing, orientation=orientation, seed=seed, noise_hu=_NOISE_HU,
                        oblique_deg=oblique_deg)
    image = write_volume(case.image, Path(folder) / f"{name}_0000.nii.gz")
    label = write_volume(phantom_labels(case.label), Path(folder) / f"{name}_gt.nii.gz")
    return image, label


def _case_of(image: Path) -> str:
    stem = image.name.removesuffix(".nii.gz")
    return stem.removesuffix("_0000")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(root: Path, key: dict) -> bool:
    try:
        return json.loads((root / "key.json").read_text(encoding="utf-8")) == key
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def nnunet_env(root: Path) -> Iterator[None]:
    """nnU-Net's path variables pointing into ``root``; no compile, no wandb."""
    saved = {name: os.environ.get(name) for name in _ENV}
    os.environ.update({"nnUNet_raw": str(root / "nnUNet_raw"),
                       "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
                       "nnUNet_results": str(root / "nnUNet_results"),
                       "nnUNet_compile": "false",
                       "nnUNet_wandb_enabled": "false"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def console_to(log: Path) -> Iterator[None]:
    """nnU-Net prints its progress; keep it in ``log`` instead of the test output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle), \
            contextlib.redirect_stderr(handle):
        yield
    sys.stdout.flush()


def _case_spacings(spacing: Sequence[float], cases: int) -> list[tuple[float, ...]]:
    """Per-case (x, y, z) spacing in mm: ``spacing`` times factors spread over [0.85, 1.15]."""
    factors = np.linspace(0.85, 1.15, cases)
    return [tuple(round(float(s) * float(f), 4) for s in spacing) for f in factors]


def _write_raw(folder: Path, key: dict) -> None:
    """Phantoms in nnU-Net's raw layout, with the dataset.json nnU-Net v2 reads."""
    spacings = _case_spacings(key["spacing"], key["cases"])
    for i, spacing in enumerate(spacings):
        case = make_phantom(key["shape"], spacing, seed=key["seed"] + i, noise_hu=_NOISE_HU)
        write_volume(case.image, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        write_volume(phantom_labels(case.label), folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    dataset = {"name": "medseg phantoms", "channel_names": {"0": "CT"}, "labels": LABELS,
               "numTraining": key["cases"], "file_ending": ".nii.gz"}
    atomic_write_text(folder / "dataset.json", json.dumps(dataset, indent=1))


def plan_and_preprocess(dataset_id: int, configurations: Sequence[str],
                        num_processes: int = 1) -> None:
    """nnU-Net's own fingerprint, default experiment planner and preprocessing of dataset
    ``dataset_id`` (``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATIONS``, in this process;
    its workers are ``spawn`` processes, hence the ``__main__`` guard of the caller). Needs
    :func:`nnunet_env`."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([dataset_id], num_processes=num_processes,
                         check_dataset_integrity=True, show_progress_bar=False)
    plans = plan_experiments([dataset_id])
    preprocess([dataset_id], plans, configurations=tuple(configurations),
               num_processes=[num_processes] * len(configurations), show_progress_bar=False)


def new_trainer(dataset: str, configuration: str, fold: int, seed: int = 0):
    """nnU-Net's default ``nnUNetTrainer`` of preprocessed ``dataset`` (e.g.
    ``"Dataset901_MedsegPhantom"``) on the CPU, seeded with ``seed + fold``; its schedule
    (``num_epochs``, ``num_iterations_per_epoch``, ``num_val_iterations_per_epoch``) is set
    on the instance by the caller, as nnU-Net's ``nnUNetTrainer_Xepochs`` variants set it in
    ``__init__``. Augmentation runs in this process (``nnUNet_n_proc_DA=0``: set here, for
    training only, since 0 also reaches the planner's ``torch.set_num_threads``, which refuses
    it; :func:`nnunet_env` restores it). Needs :func:`nnunet_env`."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = load_json(str(preprocessed / f"{PLANS}.json"))
    plans["continue_training"] = False
    random.seed(seed + fold)
    np.random.seed(seed + fold)
    torch.manual_seed(seed + fold)
    os.environ["nnUNet_n_proc_DA"] = "0"
    return nnUNetTrainer(plans=plans, configuration=configuration, fold=fold,
                         dataset_json=load_json(str(preprocessed / "dataset.json")),
                         device=torch.device("cpu"))


def _train(configuration: str, fold: int, iterations: int, seed: int) -> None:
    """nnU-Net's default trainer on the CPU with a short schedule; writes ``fold_<fold>/``."""
    trainer = new_trainer(DATASET, configuration, fold, seed)
    trainer.num_iterations_per_epoch = _ITERATIONS_PER_EPOCH
    trainer.num_epochs = max(1, -(-iterations // _ITERATIONS_PER_EPOCH))
    trainer.num_val_iterations_per_epoch = 1
    trainer.initial_lr = _INITIAL_LR
    trainer.run_training()
