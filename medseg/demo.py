"""The end-to-end demo: phantoms -> training -> prediction -> evaluation -> HTML report.

:func:`run_demo` drives the whole pipeline on generated CT phantoms, with the
settings of ``pipelines/phantom_quick.yaml``, and writes into ``out_dir``::

    data/dataset.json               MSD manifest: training / validation / test splits
    data/imagesTr, labelsTr         training and validation phantoms (NIfTI)
    data/imagesTs, labelsTs         test phantoms and their ground truth
    run/best.safetensors            best checkpoint (mean validation Dice), last.safetensors,
                                    log.csv, curves.png, config.yaml
    predictions/<case>.nii.gz       test predictions, on the test images' grid
    evaluation/results.csv          per case x label metrics, summary.csv / summary.json
    report.html                     self-contained QC report with overlays

Time budget
-----------
``minutes`` bounds the training. The training loop has no clock of its own
(its learning-rate schedule needs the total step count up front), so the demo
times a few optimiser steps of the configured network on the chosen device
and sets ``train.epochs`` / ``train.iterations_per_epoch`` so that the
estimated training time fits the budget, never exceeding the config's own
step count (on a GPU the config's schedule usually fits as is).

The pipeline YAML is read from the repository (``<repo>/pipelines/
phantom_quick.yaml``, beside the ``medseg`` package); an installed medseg
without that folder needs ``config=`` (``--config``) to point at a copy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, UsageError

__all__ = ["DEFAULT_MINUTES", "DemoResult", "LabelScore", "default_config_path", "run_demo"]

log = logging.getLogger(__name__)

DEFAULT_MINUTES = 3.5
"""Training budget: with data, prediction, evaluation and report the demo fits 5 min on 2 cores."""

_CONFIG_NAME = "phantom_quick.yaml"


@dataclass(frozen=True)
class LabelScore:
    """Test-set means of one label: Dice and HD95 (mm) over finite values."""

    label: int
    name: str
    dice: float | None
    hd95_mm: float | None


@dataclass
class DemoResult:
    """Everything :func:`run_demo` wrote and measured.

    ``scores``: one :class:`LabelScore` per label; ``mean_dice``: over every
    test case x label row; ``seconds``: wall time of each stage and ``total``.
    """

    out_dir: Path
    manifest: Path
    run_dir: Path
    checkpoint: Path
    predictions: Path
    results_csv: Path
    summary_csv: Path
    summary_json: Path
    report: Path
    device: str
    epochs: int
    iterations: int
    scores: list[LabelScore]
    mean_dice: float | None
    seconds: dict[str, float] = field(default_factory=dict)

    def paths(self) -> dict[str, Path]:
        """What was written, by role, in the order a user would open them."""
        return {
            "report": self.report, "results": self.results_csv, "summary": self.summary_csv,
            "checkpoint": self.checkpoint, "predictions": self.predictions,
            "training run": self.run_dir, "data": self.manifest.parent,
        }


# -- config ------------------------------------------------------------------------------------
def default_config_path() -> Path:
    """``pipelines/phantom_quick.yaml`` of the repository holding this ``medseg`` package.

    Raises
    ------
    ConfigError
        When there is no such file (an installed medseg has no ``pipelines/``).
    """
    import medseg

    path = Path(medseg.__file__).resolve().parent.parent / "pipelines" / _CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"the demo's pipeline {_CONFIG_NAME} is not beside the medseg package (an installed "
            "medseg has no pipelines/ folder): run from a medseg checkout, or pass "
            f"--config pipelines/{_CONFIG_NAME} from one", path)
    return path


def _load_config(config: str | os.PathLike | None, overrides: Sequence[str]):
    from medseg.config import load_config

    path = Path(config) if config is not None else default_config_path()
    cfg = load_config(path, overrides)
    if cfg.data.phantom is None:
        raise ConfigError("the demo generates phantoms: the config needs a 'data.phantom' "
                          "section (as pipelines/phantom_quick.yaml has)", path)
    return cfg


# -- time budget -------------------------------------------------------------------------------
def _budget_config(cfg, manifest: Path, runtime, minutes: float) -> tuple[Any, float]:
    """A copy of ``cfg`` reading ``manifest``, with epochs fitted to ``minutes`` of training."""
    from medseg.planning.step_time import measure_step_seconds, plan_training

    start = time.perf_counter()
    step_s = measure_step_seconds(cfg, runtime)
    budget_s = minutes * 60.0 - (time.perf_counter() - start)
    t = cfg.train
    epochs, per_epoch = plan_training(step_s, max(budget_s, 1e-3), t.epochs,
                                      t.iterations_per_epoch)
    train = dataclasses.replace(t, epochs=epochs, iterations_per_epoch=per_epoch,
                                val_every=max(1, math.ceil(epochs / 4)))
    data = dataclasses.replace(cfg.data, manifest=str(manifest), phantom=None)
    log.info("training budget %.1f min: %.2f s per step on %s -> %d epochs x %d steps "
             "(config: %d x %d)", minutes, step_s, runtime, epochs, per_epoch, t.epochs,
             t.iterations_per_epoch)
    return dataclasses.replace(cfg, data=data, train=train), step_s


# -- stages ------------------------------------------------------------------------------------
def _train(cfg, run_dir: Path, runtime, progress: bool, max_minutes: float) -> Path:
    from medseg.training import TrainOptions, train

    result = train(cfg, run_dir, TrainOptions(progress=progress, max_minutes=max_minutes),
                   runtime)
    best = run_dir / "best.safetensors"
    checkpoint = best if best.is_file() else run_dir / "last.safetensors"
    log.info("trained %d epochs; checkpoint %s (epoch %d, validation Dice %.4f)", result.epoch,
             checkpoint, result.best_epoch, result.best_score)
    return checkpoint


def _predict(checkpoint: Path, images: Path, out: Path, runtime) -> Path:
    """Segment every image of ``images`` into ``out/<case>.nii.gz`` (``medseg predict``'s way)."""
    from medseg.inference.batch import predict_cases
    from medseg.inference.predict import PredictOptions

    from medseg.data.phantom_dataset import remove_stale_phantoms

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_phantoms(out, [p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz")])
    written = predict_cases(checkpoint, images, out, PredictOptions(), runtime)
    log.info("predicted %d test cases into %s", len(written), out)
    return out


def _scores(summary: dict[str, Any]) -> tuple[list[LabelScore], float | None]:
    scores = [
        LabelScore(int(key), group["label_name"], group["metrics"]["dice"]["mean"],
                   group["metrics"]["hd95_mm"]["mean"])
        for key, group in summary["labels"].items()
    ]
    return scores, summary["overall"]["metrics"]["dice"]["mean"]


def run_demo(
    out_dir: str | os.PathLike,
    minutes: float = DEFAULT_MINUTES,
    device: str = "auto",
    *,
    n_test: int = 4,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    progress: bool | None = None,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` (see the module docstring for what it writes).

    Parameters
    ----------
    out_dir : output folder (created; an earlier demo's files are replaced).
    minutes : training time budget in minutes (> 0); see "Time budget" above.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    n_test : number of test phantoms (>= 1), generated after the training ones.
    config : pipeline YAML; default ``pipelines/phantom_quick.yaml`` of the repository.
    overrides : ``section.key=value`` overrides of the config, as ``medseg train --set``.
    progress : tqdm bars (default: when stderr is a terminal).

    Returns
    -------
    :class:`DemoResult` with every path written, the per-label test scores and timings.

    Raises
    ------
    UsageError : bad ``minutes``, ``n_test`` or ``device``.
    ConfigError : no pipeline YAML found, or an invalid one.
    """
    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"minutes must be a positive number, got {minutes!r}")
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1:
        raise UsageError(f"n_test must be an integer >= 1, got {n_test!r}")
    progress = sys.stderr.isatty() if progress is None else bool(progress)
    out = Path(out_dir)
    from medseg.runtime import Runtime

    cfg = _load_config(config, overrides)
    runtime = Runtime.resolve(device, cfg.train.amp)
    clock = _Clock()

    from medseg.data.phantom_dataset import write_phantom_dataset

    manifest = write_phantom_dataset(cfg.data.phantom, out / "data", n_test, progress)
    clock.lap("data")
    train_cfg, _ = _budget_config(cfg, manifest, runtime, float(minutes))
    checkpoint = _train(train_cfg, out / "run", runtime, progress, float(minutes))
    clock.lap("training")
    predictions = _predict(checkpoint, out / "data" / "imagesTs", out / "predictions", runtime)
    clock.lap("prediction")
    result = _evaluate_and_report(out, manifest, predictions)
    clock.lap("evaluation and report")
    scores, mean_dice = _scores(result["summary"])
    return DemoResult(
        out_dir=out, manifest=manifest, run_dir=out / "run", checkpoint=checkpoint,
        predictions=predictions, results_csv=result["results"],
        summary_csv=result["results"].with_name("summary.csv"),
        summary_json=result["results"].with_name("summary.json"), report=result["report"],
        device=str(runtime.device), epochs=train_cfg.train.epochs,
        iterations=train_cfg.train.epochs * train_cfg.train.iterations_per_epoch,
        scores=scores, mean_dice=mean_dice, seconds=clock.total(),
    )


def _evaluate_and_report(out: Path, manifest: Path, predictions: Path) -> dict[str, Any]:
    from medseg.data.phantom import LABEL_NAMES
    from medseg.evaluation import evaluate_folders
    from medseg.report import WorstCases, write_report

    data = manifest.parent
    results = out / "evaluation" / "results.csv"
    _, summary = evaluate_folders(predictions, data / "labelsTs", results, labels=LABEL_NAMES)
    n_cases = int(summary["n_cases"])
    worst = WorstCases(n=min(n_cases, 5), images_dir=data / "imagesTs", pred_dir=predictions,
                       gt_dir=data / "labelsTs", window="ct")
    report = write_report(results, out / "report.html", labels=LABEL_NAMES, worst=worst)
    return {"results": results, "summary": summary, "report": Path(report)}


class _Clock:
    """Wall seconds per stage."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 1)
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.laps, "total": round(time.perf_counter() - self.start, 1)}
