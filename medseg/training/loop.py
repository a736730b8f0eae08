"""The training loop: patches in, checkpoints out, resumable, optionally distributed.

Each epoch draws ``iterations_per_epoch * batch_size`` patches per rank
(:class:`~medseg.data.sampling.PatchDataset`), augments them on the training
device, takes one optimiser step per batch with the learning rate of that step
(:mod:`~medseg.training.optim`), then -- every ``val_every`` epochs and at the
end -- runs sliding-window validation with Dice per label. The main rank writes
into ``RUN_DIR``:

* ``last.safetensors`` (every epoch) and ``best.safetensors`` (best mean
  validation Dice): self-describing checkpoints for ``medseg predict``;
* ``last.resume.safetensors``: weights, optimiser, grad scaler, RNG states,
  epoch, step, sampler state and history, for ``--resume``;
* ``log.csv``, ``curves.png``, ``config.yaml`` and TensorBoard events when installed;
* ``postprocessing.json``: the post-processing chosen on the last validation (below);
* ``calibration.json``: with ``train.calibrate``, the calibration of ``best`` on the
  validation cases (below).

Post-processing: unless the config asks for one (``inference.keep_largest``) or the run is
a cross-validation fold (the folds' choice is made out of fold, :mod:`medseg.crossval`),
the last validation also scores keep-largest-component and small-component removal per
label, and the choice nnU-Net's rule makes from it
(:func:`medseg.inference.postprocess_choice.choose_postprocess`) goes into the model card
of ``best`` and ``last``, so ``medseg predict`` applies it. It costs no extra inference.

Calibration (``train.calibrate``, written by ``medseg plan``; not in cross-validation folds,
which :mod:`medseg.crossval` calibrates out of fold): the run ends by predicting its
validation cases with ``best`` and fitting its temperature(s) and QC's reference on them
(:func:`medseg.inference.calibration.calibrate`), into the cards of ``best`` and ``last``, so
that ``medseg predict --qc`` judges the run's model as ``medseg calibrate`` would have set
it up. Within a budget the run stops early enough to keep ``CALIBRATION_VALIDATIONS`` times
its longest validation plus ``CALIBRATION_CASE_S`` per validation case for it; the log says
how long it took.

Determinism: the model is initialised from ``train.seed``; patch ``i`` of epoch
``e`` on rank ``r`` comes from seed ``(seed, e, r, i)``; augmentation of step
``s`` from ``(seed, e, r, s)``; the global RNGs are re-seeded from
``(seed, e, r)`` at each epoch start. So on the CPU the same seed gives the same
weights, and a run resumed from ``last.resume.safetensors`` ends exactly where
an uninterrupted run does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.card import ModelCard, NetworkSpec
from medseg.confidence import Cohort, Confidence
from medseg.checkpoint import save_checkpoint, update_card
from medseg.config import PipelineConfig
from medseg.data.augment import Augmenter
from medseg.data.sampling import PatchDataset, PatchSampler, collate_batch
from medseg.errors import CheckpointError, ConfigError, MedsegError, UsageError
from medseg.io.atomic import atomic_write_text
from medseg.runtime import Runtime
from medseg.training.data import TrainingData, prepare_data
from medseg.training.distributed import all_reduce_sum, barrier, init_distributed, shutdown
from medseg.training.logs import TensorBoard, append_param_hash, plot_curves, write_csv
from medseg.training.optim import lr_at, make_optimizer, set_lr
from medseg.training.resume import (
    load_resume_state,
    restore_rng_states,
    rng_states,
    save_resume_state,
)
from medseg.training.supervision import deep_supervision_loss
from medseg.training.validation import PostprocessEvidence, validate

__all__ = ["TrainOptions", "TrainResult", "budget_minutes", "train"]

log = logging.getLogger(__name__)
RESUME_FILE = "last.resume.safetensors"
#: The training cohort measured at the start of a run (read back on --resume).
COHORT_FILE = "cohort.json"
CALIBRATION_FILE = "calibration.json"
#: A run's calibration (``train.calibrate``) reads each validation case from its files and
#: predicts it twice on its own grid (fit, then QC's reference with a mirrored member). A
#: budgeted run keeps ``CALIBRATION_VALIDATIONS`` longest validations (network grid, cached
#: arrays, one pass) plus ``CALIBRATION_CASE_S`` per validation case for it. On the left
#: atrium's 13 validation cases (a shared 2-core machine): the hour plan's model took 78 s
#: beside a 17 s validation (kept: 111 s); a quarter-hour plan's 26.3 s beside 2.8 s (kept:
#: 40 s; 5 validations alone kept only 14 s).
CALIBRATION_VALIDATIONS = 5.0
CALIBRATION_CASE_S = 2.0


@dataclass
class TrainOptions:
    """Run options that are not part of the pipeline config.

    ``progress``: tqdm bars (default: when stderr is a terminal).
    ``debug_param_hashes``: each rank appends ``epoch step sha256(parameters)`` per
    step to ``RUN_DIR/debug/params.rank<r>.txt`` (checks that DDP ranks agree).
    ``debug_kill_after_epoch``: SIGKILL this process right after that epoch's
    checkpoints are written (tests of ``--resume``).
    ``max_minutes``: wall-clock budget; the run stops (validating and saving) after the
    last epoch that is expected to finish within it. ``--resume`` continues later. With
    ``train.max_minutes`` in the config too, the smaller one holds.
    ``choose_postprocess``: choose post-processing on the last validation (see the module
    docstring); cross-validation folds turn it off.
    ``schedule_minutes`` and ``schedule_start``: with a budget, the learning-rate schedule's
    time share (:func:`~medseg.training.optim.lr_at`) is ``schedule_start`` plus the minutes
    since the run's start over ``schedule_minutes`` (default 0 and the budget): a screened
    candidate decays as its whole run would, and the winner's continuation starts where its
    screening stopped (:mod:`medseg.training.screening`).
    ``calibrate``: end by calibrating ``best`` on the validation cases (None: as
    ``train.calibrate`` says; folds and screened candidates turn it off; see the module
    docstring).
    ``amp``: the command line's ``--amp``/``--no-amp`` for every config a run trains; None:
    each config's own ``train.amp`` (a screening's candidates each train in their own
    precision, :mod:`medseg.training.screening`).
    ``clock_after_setup``: the budget's clock starts once the run is set up (data, cohort,
    network) rather than at its start: screened candidates get equal training time, whatever
    the first one paid for its imports (MONAI's took 10 s on a busy 2-core machine).
    """

    resume: bool = False
    progress: bool | None = None
    debug_param_hashes: bool = False
    debug_kill_after_epoch: int | None = None
    max_minutes: float | None = None
    choose_postprocess: bool = True
    schedule_minutes: float | None = None
    schedule_start: float = 0.0
    clock_after_setup: bool = False
    amp: bool | None = None
    calibrate: bool | None = None


@dataclass
class TrainResult:
    """What a finished run produced. ``best_score``: best mean validation Dice (without
    validation cases: minus the lowest training loss); ``val_cases``: the validation cases'
    ids; ``seconds``: from the budget's clock start to the run's end."""

    run_dir: Path
    epoch: int
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)
    seconds: float = 0.0


def budget_minutes(cfg: PipelineConfig, options: TrainOptions) -> float | None:
    """A run's wall-clock budget in minutes: the smaller of ``options.max_minutes``
    (``--max-minutes``) and ``train.max_minutes`` (None: no budget)."""
    given = [m for m in (options.max_minutes, cfg.train.max_minutes) if m is not None]
    return min(given) if given else None


def _derive_seed(*parts: int) -> int:
    """A 32-bit seed from a tuple of non-negative ints (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def train(cfg: PipelineConfig, run_dir: str | os.PathLike,
          options: TrainOptions | None = None, runtime: Runtime | None = None) -> TrainResult:
    """Train the pipeline ``cfg`` into ``run_dir`` (created); see the module docstring.

    ``runtime``: device, precision and torchrun place (:class:`medseg.runtime.Runtime`);
    default ``Runtime.resolve("auto", cfg.train.amp)``. A config with ``train.select``
    screens its candidates first and continues the better one
    (:func:`medseg.training.screening.train_selected`).
    """
    options = options or TrainOptions()
    runtime = runtime or Runtime.resolve("auto", cfg.train.amp)
    if cfg.train.select is not None:
        from medseg.training.screening import train_selected

        return train_selected(cfg, Path(run_dir), options, runtime)
    init_distributed(runtime)
    try:
        return _Trainer(cfg, Path(run_dir), options, runtime).run()
    finally:
        shutdown(runtime)


class _Trainer:
    """State of one training run (one instance per process)."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, options: TrainOptions,
                 runtime: Runtime) -> None:
        from medseg.transforms import Preprocessing

        self.cfg, self.run_dir, self.options = cfg, run_dir, options
        # the budget's clock starts here: the preprocessing cache is built inside it
        self._clock: tuple[float, float | None] = (time.monotonic(), self._budget_minutes())
        self.runtime, self.device = runtime, runtime.device
        self._prepare_run_dir()
        self._set_determinism()
        try:
            self.preprocessing = Preprocessing.from_config(cfg.preprocessing)
        except MedsegError as exc:
            raise ConfigError(f"preprocessing: {exc.message}", cfg.source) from exc
        cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache"
        self.data: TrainingData = prepare_data(cfg, self.preprocessing, cache_dir, runtime,
                                               progress=self._show_progress)
        self.model = self._build_model().to(self.device)
        self.card: ModelCard = cfg.model_card(NetworkSpec.of(self.model),
                                              self.data.label_names, self.data.channels)
        if runtime.is_main:
            self.card = self.card.replace(confidence=Confidence(cohort=self._cohort()))
        self.loss_fn = self._build_loss()
        self.optimizer = make_optimizer(self.model.parameters(), cfg.train)
        self.scaler = self._scaler()
        self.dataset = self._build_dataset()
        self.augment = Augmenter(cfg.train.augment)
        self.epoch, self.step = 0, 0
        self._longest_validation = 0.0  # seconds
        self._evidence: PostprocessEvidence | None = None
        self.best_score, self.best_epoch = -math.inf, 0
        self.history: list[dict[str, Any]] = []
        if options.resume:
            self._load_resume()
        self.net = self._wrap_ddp()
        self.tensorboard = TensorBoard(run_dir / "tensorboard", enabled=runtime.is_main)
        if options.clock_after_setup:
            self._clock = (time.monotonic(), self._clock[1])

    # -- set-up ----------------------------------------------------------------------------------
    @property
    def _show_progress(self) -> bool:
        if not self.runtime.is_main:
            return False
        return sys.stderr.isatty() if self.options.progress is None else self.options.progress

    def _prepare_run_dir(self) -> None:
        import yaml

        if self.runtime.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.options.resume and (self.run_dir / RESUME_FILE).exists():
                log.warning("%s already holds a run: starting afresh (use --resume to continue)",
                            self.run_dir)
            atomic_write_text(self.run_dir / "config.yaml",
                              yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        barrier(self.runtime)

    def _cohort(self) -> Cohort:
        """The training cases' cohort for the card (:mod:`medseg.data.cohort`), measured once
        per run into ``RUN/cohort.json`` and read back from it on ``--resume``."""
        from medseg.data.cohort import measure_cohort

        path = self.run_dir / COHORT_FILE
        if self.options.resume and path.is_file():
            return Cohort.from_dict(json.loads(path.read_text()))
        cohort = measure_cohort(self.data.train_cases, list(self.data.label_names),
                                self.data.modality, progress=self._show_progress)
        atomic_write_text(path, json.dumps(cohort.to_dict(), indent=1) + "\n")
        return cohort

    def _set_determinism(self) -> None:
        torch.manual_seed(self.cfg.train.seed)
        if self.cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _build_model(self) -> torch.nn.Module:
        from medseg import models

        kwargs = dict(self.cfg.model.kwargs)
        kwargs.setdefault("seed", self.cfg.train.seed)
        if self.cfg.train.deep_supervision:
            kwargs["deep_supervision"] = True
        try:
            return models.create(self.cfg.model.name, in_channels=self.data.in_channels,
                                 out_channels=self.data.num_classes, **kwargs)
        except (MedsegError, TypeError) as exc:
            message = exc.message if isinstance(exc, MedsegError) else str(exc)
            raise ConfigError(f"model: {message}", self.cfg.source) from exc

    def _build_loss(self) -> torch.nn.Module:
        from medseg import losses

        try:
            return losses.create(self.cfg.loss.name, **self.cfg.loss.kwargs).to(self.device)
        except (MedsegError, TypeError) as exc:
            message = exc.message if isinstance(exc, MedsegError) else str(exc)
            raise ConfigError(f"loss: {message}", self.cfg.source) from exc

    def _scaler(self) -> Any:
        """A gradient scaler for fp16 training (bf16 and fp32 need none)."""
        if self.runtime.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def _build_dataset(self) -> PatchDataset:
        t, rt = self.cfg.train, self.runtime
        shard = self.data.train[rt.rank :: rt.world_size] or self.data.train
        sampler = PatchSampler(t.patch_size, t.foreground_ratio, t.class_probabilities)
        return PatchDataset(shard, sampler, t.iterations_per_epoch * t.batch_size, t.seed, rt.rank)

    def _wrap_ddp(self) -> torch.nn.Module:
        if not self.runtime.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    # -- resume ----------------------------------------------------------------------------------
    def _resume_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_states(),
            "sampler": self.dataset.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "longest_validation": self._longest_validation,
        }

    def _load_resume(self) -> None:
        path = self.run_dir / RESUME_FILE
        if not path.is_file():
            raise UsageError(f"nothing to resume: no {RESUME_FILE} in this run folder "
                             "(start without --resume)", self.run_dir)
        state = load_resume_state(path)
        try:
            self.model.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"resume state does not fit the configured model/optimizer "
                                  f"(was the config changed?): {str(exc).splitlines()[0]}",
                                  path) from exc
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        self.dataset.load_state_dict(state["sampler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.history = list(state["history"])
        self._longest_validation = float(state.get("longest_validation", 0.0))
        log.info("resuming %s after epoch %d (step %d)", self.run_dir, self.epoch, self.step)

    # -- one epoch -------------------------------------------------------------------------------
    def _seed_epoch(self, epoch: int) -> None:
        seed = _derive_seed(self.cfg.train.seed, epoch, self.runtime.rank)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        self.dataset.set_epoch(epoch)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        t = self.cfg.train
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=t.batch_size, shuffle=False, num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=False, collate_fn=collate_batch,
            generator=torch.Generator().manual_seed(_derive_seed(t.seed, epoch, 7)),
        )

    def _train_step(self, image: torch.Tensor, label: torch.Tensor, epoch: int) -> float:
        t = self.cfg.train
        set_lr(self.optimizer, lr_at(self.step, t, self._time_fraction()))
        image = image.to(self.device, non_blocking=True)
        label = label.to(self.device, non_blocking=True).long()
        if self.augment.enabled:
            image, label = self.augment(image, label,
                                        _derive_seed(t.seed, epoch, self.runtime.rank, self.step))
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.autocast():
            loss = deep_supervision_loss(self.loss_fn, self.net(image), label)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def _train_epoch(self, epoch: int) -> float:
        from tqdm.auto import tqdm

        self._seed_epoch(epoch)
        self.net.train()
        total, count = 0.0, 0
        bar = tqdm(self._loader(epoch), desc=f"epoch {epoch}/{self.cfg.train.epochs}",
                   unit="it", disable=not self._show_progress, leave=False, dynamic_ncols=True)
        for image, label in bar:
            total += self._train_step(image, label, epoch)
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{lr_at(self.step, self.cfg.train):.2e}")
            if self.options.debug_param_hashes:
                append_param_hash(self.run_dir / "debug" / f"params.rank{self.runtime.rank}.txt",
                                  self.model, epoch, self.step)
        bar.close()
        sums = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64,
                                           device=self._reduce_device), self.runtime)
        return float(sums[0] / max(sums[1], 1))

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if self.runtime.distributed and self.device.type == "cuda" else torch.device("cpu")

    # -- validation and checkpoints ----------------------------------------------------------------
    def _validate(self, epoch: int, final: bool = False) -> dict[str, float]:
        due = final or epoch % self.cfg.train.val_every == 0 or epoch == self.cfg.train.epochs
        if not (due and self.data.val):
            return {}
        began = time.monotonic()
        if final and self._chooses_postprocess:
            self._evidence = PostprocessEvidence(range(1, self.data.num_classes))
        dice = validate(self.model, self.data.val, self.card.window, self.data.num_classes,
                        self.runtime, collect=self._evidence if final else None)
        self._longest_validation = max(self._longest_validation, time.monotonic() - began)
        row = {"val_mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan}
        for value, score in zip(range(1, self.data.num_classes), dice):
            row[f"dice_{self.data.label_names.get(value, value)}"] = float(score)
        return row

    def _save(self, row: dict[str, Any]) -> None:
        score = row.get("val_mean_dice")
        if not self.data.val:
            score = -row["train_loss"]  # no validation cases: best = lowest training loss
        improved = score is not None and not math.isnan(score) and score > self.best_score
        if improved:
            self.best_score, self.best_epoch = float(score), self.epoch
        save_resume_state(self.run_dir / RESUME_FILE, self._resume_state())
        record = {"train_config": self.cfg.to_dict(), "epoch": self.epoch,
                  "metrics": {k: v for k, v in row.items() if isinstance(v, float)}}
        save_checkpoint(self.run_dir / "last.safetensors", self.model, self.card, **record)
        if improved:
            save_checkpoint(self.run_dir / "best.safetensors", self.model, self.card, **record)
        write_csv(self.run_dir / "log.csv", self.history)
        plot_curves(self.run_dir / "curves.png", self.history)
        self.tensorboard.scalars(row, self.epoch)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t = self.cfg.train
        if self.epoch >= t.epochs and not self._fills_budget:
            log.info("already trained %d of %d epochs: nothing to do (raise train.epochs "
                     "with --set train.epochs=N to continue)", self.epoch, t.epochs)
        start = self._clock[0]
        if self._clock[1] is not None:
            log.info("time budget %.1f min (%.1f spent preparing the data): training stops, "
                     "validates and saves within it", self._clock[1],
                     (time.monotonic() - start) / 60)
        first, run_start = self.epoch + 1, time.monotonic()
        last = sys.maxsize if self._fills_budget else t.epochs
        out_of_time = False
        for epoch in range(first, last + 1):
            began = time.monotonic()
            loss = self._train_epoch(epoch)
            out_of_time = epoch < last and self._out_of_time(start, began)
            row: dict[str, Any] = {"epoch": epoch, "step": self.step, "train_loss": loss,
                                   "lr": lr_at(self.step, t, self._time_fraction())}
            row.update(self._validate(epoch, final=out_of_time or epoch == last))
            row["seconds"] = round(time.monotonic() - began, 2)
            self.epoch = epoch
            self.history.append(row)
            if self.runtime.is_main:
                self._save(row)
            barrier(self.runtime)
            self._log_epoch(row, run_start, epoch - first + 1)
            if self.options.debug_kill_after_epoch == epoch:
                os.kill(os.getpid(), signal.SIGKILL)
            if out_of_time and self._fills_budget:
                log.info("time budget of %.1f min filled: %d epochs (%d planned) in %.1f min, "
                         "with validation and checkpoints", self._clock[1], epoch, t.epochs,
                         (time.monotonic() - start) / 60)
                break
            if out_of_time:
                log.warning("time budget of %.1f min: stopped after epoch %d of %d, in %.1f min "
                            "with validation and checkpoints (continue with --resume)",
                            self._clock[1], epoch, t.epochs, (time.monotonic() - start) / 60)
                break
        if self._clock[1] is not None and not out_of_time:
            log.info("time budget %.1f min: all %d epochs done in %.1f min", self._clock[1],
                     t.epochs, (time.monotonic() - start) / 60)
        self._choose_postprocess()
        self._calibrate()
        self.tensorboard.close()
        return TrainResult(self.run_dir, self.epoch, self.best_score, self.best_epoch,
                           list(self.history), [c.case_id for c in self.data.val],
                           time.monotonic() - start)

    @property
    def _fills_budget(self) -> bool:
        """``train.fill_budget`` with a budget: the run lasts as long as the budget."""
        return self.cfg.train.fill_budget and self._clock[1] is not None

    @property
    def _chooses_postprocess(self) -> bool:
        return (self.options.choose_postprocess and not self.cfg.inference.keep_largest
                and bool(self.data.val))

    @property
    def _calibrates(self) -> bool:
        wanted = self.options.calibrate
        wanted = self.cfg.train.calibrate if wanted is None else wanted
        return wanted and bool(self.data.val_cases)

    def _calibrate(self) -> None:
        """``best`` (else ``last``) calibrated on the validation cases by the main rank (the
        module docstring); the other ranks wait."""
        if not self._calibrates:
            return
        if self.runtime.is_main:
            self._calibrate_best()
        barrier(self.runtime)

    def _calibrate_best(self) -> None:
        """The temperature(s) and QC's reference of ``best`` (else ``last``) on the validation
        cases (:func:`medseg.inference.calibration.calibrate`) into the cards of ``best`` and
        ``last`` and ``calibration.json``. A run whose validation cases cannot calibrate (no
        foreground in any) keeps its cards and says why in one warning."""
        from medseg.inference.calibration import calibrate

        began = time.monotonic()
        model = next(p for p in (self.run_dir / "best.safetensors",
                                 self.run_dir / "last.safetensors") if p.is_file())
        try:
            result = calibrate(model, self.data.val_cases, Runtime(self.runtime.device),
                               progress=False)
        except UsageError as exc:
            log.warning("%s is not calibrated: %s", model.name, exc)
            return
        self.card = self.card.replace(confidence=result.apply(
            self.card.confidence or Confidence()))
        for name in ("best.safetensors", "last.safetensors"):
            if (self.run_dir / name).is_file():
                update_card(self.run_dir / name, self.card)
        atomic_write_text(self.run_dir / CALIBRATION_FILE,
                          json.dumps(result.to_dict(), indent=1) + "\n")
        log.info("calibrated %s on %d validation cases in %.1f s (%.1f s reserved): "
                 "temperature %.3f, ECE %.4f -> %.4f", model.name, result.cases,
                 time.monotonic() - began, self._calibration_reserve(), result.temperature,
                 result.before.ece, result.after.ece)

    def _calibration_reserve(self) -> float:
        """Seconds a budgeted run keeps for :meth:`_calibrate`: ``CALIBRATION_VALIDATIONS``
        times its longest validation plus ``CALIBRATION_CASE_S`` per validation case (0 when
        it does not calibrate)."""
        if not self._calibrates:
            return 0.0
        return (CALIBRATION_VALIDATIONS * self._longest_validation
                + CALIBRATION_CASE_S * len(self.data.val_cases))

    def _choose_postprocess(self) -> None:
        """The post-processing the last validation supports -> ``postprocessing.json`` and
        the cards of ``best`` and ``last`` (the module docstring)."""
        if self._evidence is None:
            return
        choice = self._evidence.gather(self.runtime).choose()
        if self.runtime.is_main:
            names = {v: n for v, n in self.card.labels.items() if v != 0}
            atomic_write_text(self.run_dir / "postprocessing.json",
                              json.dumps(choice.to_dict(names), indent=1) + "\n")
            self.card = self.card.replace(postprocess=choice.postprocess)
            for name in ("best.safetensors", "last.safetensors"):
                if (self.run_dir / name).is_file():
                    update_card(self.run_dir / name, self.card)
            log.info("post-processing chosen on %d validation cases: %s (mean Dice %.4f -> "
                     "%.4f on the preprocessed grid)", len(self._evidence.dice),
                     choice.postprocess.to_dict() or "none", choice.mean_dice(chosen=False),
                     choice.mean_dice())
        barrier(self.runtime)

    def _budget_minutes(self) -> float | None:
        return budget_minutes(self.cfg, self.options)

    def _time_fraction(self) -> float | None:
        """The schedule's time share so far: the share of the budget spent (None without a
        budget), or as ``TrainOptions.schedule_minutes`` / ``schedule_start`` say."""
        start, minutes = self._clock
        if minutes is None:
            return None
        span = self.options.schedule_minutes or minutes
        return self.options.schedule_start + (time.monotonic() - start) / (60.0 * span)

    def _out_of_time(self, start: float, began: float) -> bool:
        """True when another epoch as long as this one, with a validation as long as the
        longest so far and this epoch's validation, would overrun the budget.

        Under DDP the ranks agree (any rank out of time stops all), so none waits forever.
        """
        minutes = self._clock[1]
        if minutes is None:
            return False
        now = time.monotonic()
        validation = self._longest_validation
        over = ((now - start) + (now - began) + 2 * validation + self._calibration_reserve()
                > 60.0 * minutes)
        if self.runtime.distributed:
            flag = torch.tensor([1.0 if over else 0.0], device=self.device)
            over = bool(all_reduce_sum(flag, self.runtime).item() > 0)
        return over

    def _log_epoch(self, row: dict[str, Any], start: float, done: int) -> None:
        if not self.runtime.is_main:
            return
        remaining = self.cfg.train.epochs - row["epoch"]
        eta = (time.monotonic() - start) / done * remaining
        if self._fills_budget:  # the budget is the schedule
            eta = max(self._clock[0] + 60.0 * self._clock[1] - time.monotonic(), 0.0)
        dice = row.get("val_mean_dice")
        val = f", val mean Dice {dice:.4f}" if isinstance(dice, float) else ""
        epoch = "epoch %d (%d planned)" if self._fills_budget else "epoch %d/%d"
        log.info(epoch + ": loss %.4f%s (%.1f s, ETA %.0f s)", row["epoch"],
                 self.cfg.train.epochs, row["train_loss"], val, row["seconds"], eta)
