"""Screening (``train.select``): a config and its candidates trained on one split for a
share of the time budget, the better one continued for the rest.

``medseg plan --time-budget`` writes ``train.select`` into ``plan.yaml`` for highly
anisotropic data, naming ``plan_2d.yaml`` (nnU-Net's ``2d``) as the candidate of the slab
or 3D plan. :func:`train_selected`, within the budget ``B`` (``train.max_minutes``, or
``--max-minutes`` when smaller), from one clock:

1. builds the preprocessing cache once, before any candidate's clock starts (``RUN/cache``,
   shared: every candidate must have the screening config's ``data``, ``preprocessing`` and
   ``train.seed``, hence the same training and validation cases on the same grid);
2. trains the configs one after the other, the screening config first, each into
   ``RUN/screen/<name>/`` (``name``: its file's stem) for an equal share ``s`` of
   ``screen_fraction * B`` less the cache build, by the clock (``train.fill_budget``),
   counted from the end of its set-up (``TrainOptions.clock_after_setup``: the first one
   set up pays for imports the others find loaded; the deadline below absorbs it). Each
   decays its learning rate as its whole run would if it won: over ``W = B - cache -
   (n - 1) s``, what the winner trains in all (``TrainOptions.schedule_minutes``);
3. picks the highest mean validation Dice of the screening's last validation -- the score
   ``best.safetensors`` is chosen by, on the same validation cases, of the very state that
   would continue, once per candidate at the same point of its schedule (the best over the
   screening would favour the candidate validated more often) -- ties: the screening config;
   writes ``RUN/selection.json`` and moves the winner's folder up into ``RUN``;
4. continues the winner there from its screening state (weights, optimiser, sampler,
   history: ``--resume``'s) until the budget's end, the learning rate's time share going on
   from where its screening stopped (``t_w / W``) to 1 at the end, so its ``log.csv`` reads
   as one run of ``W``; ``selection.json`` then also records the whole run's minutes.

The loser stays in ``RUN/screen/<name>/`` (checkpoints, ``log.csv``, curves): its weights
are what its recorded Dice was measured on, and it costs no time to keep. ``medseg predict
-m RUN`` uses the winner (``RUN/best.safetensors``) like any run. ``--resume`` after the
choice continues the winner like any ``--resume``; before it, there is nothing to resume.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg.config import PipelineConfig, load_config
from medseg.errors import ConfigError, MedsegError, UsageError
from medseg.io.atomic import atomic_write_text
from medseg.runtime import Runtime
from medseg.training.data import prepare_data
from medseg.training.distributed import barrier, init_distributed, shutdown
from medseg.training.folds import with_cache
from medseg.training.loop import TrainOptions, TrainResult, budget_minutes, train

__all__ = ["SCREEN_DIR", "SELECTION_FILE", "Candidate", "Screened", "choose",
           "load_candidates", "train_selected"]

log = logging.getLogger(__name__)
SCREEN_DIR = "screen"
SELECTION_FILE = "selection.json"
METRIC = ("mean validation Dice (the score best.safetensors is chosen by, on the preprocessed "
          "grid) of each candidate's last screening validation")


@dataclass(frozen=True)
class Candidate:
    """A config to screen: ``name`` (its file's stem: its folder ``RUN/screen/<name>``),
    ``path`` (its YAML, None for a config built in Python) and the config, set up for
    screening (shared cache, by the clock, no ``select`` of its own)."""

    name: str
    path: str | None
    cfg: PipelineConfig


@dataclass(frozen=True)
class Screened:
    """A candidate after its screening: the run's result and its wall time (seconds)."""

    candidate: Candidate
    result: TrainResult
    seconds: float

    @property
    def dice(self) -> float:
        """Mean validation Dice of the screening's last validation (-inf when it gave no
        number)."""
        rows = [r["val_mean_dice"] for r in self.result.history if "val_mean_dice" in r]
        score = float(rows[-1]) if rows else math.nan
        return score if math.isfinite(score) else -math.inf


def train_selected(cfg: PipelineConfig, run_dir: str | os.PathLike,
                   options: TrainOptions | None = None,
                   runtime: Runtime | None = None) -> TrainResult:
    """Screen ``cfg`` and its ``train.select.candidates``, continue the better one in
    ``run_dir`` (the module docstring); returns the winner's whole run.

    Raises
    ------
    UsageError : no time budget to screen within; ``--resume`` before a choice was made.
    ConfigError : a candidate that is missing, screens candidates itself, or differs from
        ``cfg`` in ``data``, ``preprocessing`` or ``train.seed``.
    """
    run_dir, options = Path(run_dir), options or TrainOptions()
    runtime = runtime or Runtime.resolve("auto", cfg.train.amp)
    if options.resume:
        return _resume_winner(run_dir, options, runtime)
    start = time.monotonic()
    budget_s = _budget_seconds(cfg, options)
    candidates = load_candidates(cfg, run_dir)
    init_distributed(runtime)
    try:
        if runtime.is_main:
            (run_dir / SELECTION_FILE).unlink(missing_ok=True)  # a former run's choice
        has_val = bool(_prepare(candidates[0].cfg, runtime).val)
        share_s = (cfg.train.select.screen_fraction * budget_s - (time.monotonic() - start)
                   ) / len(candidates)
        if not has_val or share_s <= 0:
            return _alone(candidates[0], run_dir, options, runtime, start + budget_s,
                          "no validation cases to compare on" if not has_val else
                          "building the cache spent the screening share")
        whole_s = budget_s - (time.monotonic() - start) - (len(candidates) - 1) * share_s
        screened = [_screen(c, run_dir, options, runtime, share_s, whole_s) for c in candidates]
        winner = choose(screened)
        selection = _selection(screened, winner, budget_s, cfg.train.select.screen_fraction)
        _write(run_dir, selection, runtime)
        _promote(winner, run_dir, runtime)
        result = _continue(winner, run_dir, options, runtime, start + budget_s, whole_s)
        selection.update(final_epoch=result.epoch, best_epoch=result.best_epoch,
                         total_minutes=round((time.monotonic() - start) / 60.0, 3))
        _write(run_dir, selection, runtime)
        return result
    finally:
        shutdown(runtime)


def load_candidates(cfg: PipelineConfig, run_dir: Path) -> list[Candidate]:
    """``cfg`` (first) and each YAML of ``train.select.candidates``, checked comparable
    with it and set up for screening: one cache (``data.cache_dir``, default
    ``RUN/cache``), ``train.fill_budget`` on (they train by the clock), no ``select``."""
    cache = with_cache(cfg, run_dir).data.cache_dir
    own = Candidate(Path(cfg.source).stem if cfg.source else "config", cfg.source,
                    _for_screening(cfg, cache))
    out = [own]
    for path in cfg.train.select.candidates:
        other = load_config(path)
        if other.train.select is not None:
            raise ConfigError("a candidate of train.select screens candidates itself: set its "
                              "train.select to null", path)
        _check_comparable(cfg, other)
        out.append(Candidate(Path(path).stem, str(path), _for_screening(other, cache)))
    names = [c.name for c in out]
    if len(set(names)) < len(names):
        raise ConfigError(f"train.select.candidates: the screened configs need distinct file "
                          f"names (their folders RUN/{SCREEN_DIR}/<name>), got {names}",
                          cfg.source)
    return out


def _for_screening(cfg: PipelineConfig, cache: str | None) -> PipelineConfig:
    data = dataclasses.replace(cfg.data, cache_dir=cache)
    t = dataclasses.replace(cfg.train, select=None, fill_budget=True)
    return dataclasses.replace(cfg, data=data, train=t)


def _check_comparable(cfg: PipelineConfig, other: PipelineConfig) -> None:
    """Raise ConfigError (naming ``other``'s file) unless it trains and validates on the
    cases and grid of ``cfg``."""
    pairs = {"data": (dataclasses.replace(cfg.data, cache_dir=None),
                      dataclasses.replace(other.data, cache_dir=None)),
             "preprocessing": (cfg.preprocessing, other.preprocessing),
             "train.seed": (cfg.train.seed, other.train.seed)}
    for key, (mine, theirs) in pairs.items():
        if mine != theirs:
            raise ConfigError(f"{key} differs from {cfg.source or 'the screening config'}'s: "
                              "screening compares validation Dice on the same split and grid, "
                              f"so a candidate needs the same {key}", other.source)


def _budget_seconds(cfg: PipelineConfig, options: TrainOptions) -> float:
    minutes = budget_minutes(cfg, options)
    if minutes is None:
        raise UsageError("train.select screens within a time budget: set train.max_minutes "
                         "(medseg plan --time-budget writes it) or give --max-minutes",
                         cfg.source)
    return 60.0 * minutes


def _prepare(cfg: PipelineConfig, runtime: Runtime):
    """The cached cases of ``cfg`` (built once here, so no candidate's share pays for it)."""
    from medseg.transforms import Preprocessing

    try:
        preprocessing = Preprocessing.from_config(cfg.preprocessing)
    except MedsegError as exc:
        raise ConfigError(f"preprocessing: {exc.message}", cfg.source) from exc
    return prepare_data(cfg, preprocessing, Path(str(cfg.data.cache_dir)), runtime)


def _screen(candidate: Candidate, run_dir: Path, options: TrainOptions, runtime: Runtime,
            share_s: float, whole_s: float) -> Screened:
    """Train ``candidate`` into ``RUN/screen/<name>`` for ``share_s`` seconds, its learning
    rate decaying over ``whole_s`` (the winner's whole training)."""
    log.info("screening %s for %.1f min", candidate.name, share_s / 60.0)
    began = time.monotonic()
    result = train(candidate.cfg, run_dir / SCREEN_DIR / candidate.name,
                   dataclasses.replace(options, max_minutes=share_s / 60.0,
                                       schedule_minutes=whole_s / 60.0, schedule_start=0.0,
                                       clock_after_setup=True, calibrate=False),
                   _own_runtime(candidate.cfg, runtime, options))
    return Screened(candidate, result, time.monotonic() - began)


def choose(screened: Sequence[Screened]) -> Screened:
    """The screened run of highest last mean validation Dice; ties go to the earliest (the
    screening config, screened first)."""
    return max(screened, key=lambda s: s.dice)  # max keeps the first of equal keys


def _selection(screened: Sequence[Screened], winner: Screened, budget_s: float,
               fraction: float) -> dict:
    """What ``RUN/selection.json`` records of the choice."""
    cases = screened[0].result.val_cases
    if any(s.result.val_cases != cases for s in screened):
        raise ConfigError("the screened configs validated on different cases; give them the "
                          "same data section", screened[0].candidate.path)
    rows = [{"name": s.candidate.name, "config": s.candidate.path, "val_mean_dice": s.dice,
             "best_val_mean_dice": s.result.best_score, "best_epoch": s.result.best_epoch,
             "epochs": s.result.epoch, "minutes": round(s.seconds / 60.0, 3)} for s in screened]
    for s in screened:
        log.info("screened %s: mean validation Dice %.4f after %d epochs in %.1f min (best "
                 "%.4f)", s.candidate.name, s.dice, s.result.epoch, s.seconds / 60.0,
                 s.result.best_score)
    others = ", ".join(f"{s.candidate.name} {s.dice:.4f}" for s in screened if s is not winner)
    tie = any(s.dice == winner.dice for s in screened if s is not winner)
    reason = (f"{winner.candidate.name}: mean validation Dice {winner.dice:.4f} against "
              f"{others}" + (" (a tie: the screening config's own)" if tie else ""))
    log.info("chosen: %s; it continues for the rest of the budget", reason)
    return {"metric": METRIC, "validation_cases": list(cases),
            "budget_minutes": round(budget_s / 60.0, 3), "screen_fraction": fraction,
            "candidates": rows, "winner": winner.candidate.name,
            "winner_config": winner.candidate.path, "reason": reason}


def _write(run_dir: Path, selection: dict, runtime: Runtime) -> None:
    if runtime.is_main:
        atomic_write_text(run_dir / SELECTION_FILE, json.dumps(selection, indent=1) + "\n")


def _promote(winner: Screened, run_dir: Path, runtime: Runtime) -> None:
    """Move the winner's run folder up into ``run_dir`` (what it holds replaces what
    ``run_dir`` held under the same names; the cache and ``screen/`` stay)."""
    if runtime.is_main:
        source = run_dir / SCREEN_DIR / winner.candidate.name
        for entry in sorted(source.iterdir()):
            target = run_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        source.rmdir()
    init_distributed(runtime)  # the screening's last run closed the process group
    barrier(runtime)


def _continue(winner: Screened, run_dir: Path, options: TrainOptions, runtime: Runtime,
              deadline: float, whole_s: float) -> TrainResult:
    """The winner, resumed in ``run_dir`` until ``deadline`` (monotonic seconds), its
    schedule's time share going on from ``t_w / whole_s`` (``t_w``: its screening by its
    own clock) to 1 at the deadline."""
    left_s = deadline - time.monotonic()
    history = winner.result.history
    epoch_s = float(history[-1]["seconds"]) if history else 0.0  # its last epoch, validated
    if left_s < epoch_s:
        log.info("%.1f min left: less than one epoch of %s, whose screening run is the run",
                 left_s / 60.0, winner.candidate.name)
        return dataclasses.replace(winner.result, run_dir=run_dir)
    done = min(winner.result.seconds / whole_s, 1.0)
    minutes = left_s / 60.0
    return train(winner.candidate.cfg, run_dir,
                 dataclasses.replace(options, resume=True, max_minutes=minutes,
                                     schedule_minutes=minutes / max(1.0 - done, 1e-9),
                                     schedule_start=done),
                 _own_runtime(winner.candidate.cfg, runtime, options))


def _alone(own: Candidate, run_dir: Path, options: TrainOptions, runtime: Runtime,
           deadline: float, why: str) -> TrainResult:
    """``own`` trained alone in ``run_dir`` until ``deadline`` (no screening: ``why``)."""
    log.warning("train.select: no screening (%s): %s trains alone", why, own.name)
    return train(own.cfg, run_dir, dataclasses.replace(
        options, max_minutes=(deadline - time.monotonic()) / 60.0),
        _own_runtime(own.cfg, runtime, options))


def _resume_winner(run_dir: Path, options: TrainOptions, runtime: Runtime) -> TrainResult:
    """``--resume`` of a screened run: the winner of ``RUN/selection.json``, continued like
    any ``--resume``."""
    path = run_dir / SELECTION_FILE
    if not path.is_file():
        raise UsageError(f"nothing to resume: no {SELECTION_FILE} (the screening did not "
                         "choose yet); start again without --resume", run_dir)
    winner = json.loads(path.read_text())["winner_config"]
    if winner is None:
        raise UsageError(f"{SELECTION_FILE}: the winner was a config built in Python, not a "
                         "file; resume it with medseg.training.train(its config, RUN, "
                         "TrainOptions(resume=True))", run_dir)
    cfg = load_config(winner)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, select=None))
    log.info("resuming the screening's winner %s", winner)
    return train(with_cache(cfg, run_dir), run_dir, options, _own_runtime(cfg, runtime, options))


def _own_runtime(cfg: PipelineConfig, runtime: Runtime, options: TrainOptions) -> Runtime:
    """``runtime`` in ``cfg``'s own precision (its ``train.amp``; ``options.amp``, the
    command line's ``--amp``/``--no-amp``, overrides it): ``plan.yaml`` may train in bf16
    where its 2D candidate's measured bf16 step was no faster and ``plan_2d.yaml`` says
    fp32."""
    return runtime.with_amp(cfg.train.amp_with(options.amp))
