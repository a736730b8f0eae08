"""``medseg plan``: from a manifest to a complete pipeline YAML, every choice with its reason.

:func:`make_plan` fingerprints the training cases (:mod:`medseg.planning.fingerprint`),
applies nnU-Net's rules (:mod:`medseg.planning.rules`) for the hardware
(:mod:`medseg.planning.design`) and, given a time budget, fits the schedule to a measured
step time (:func:`medseg.planning.step_time.measure_step_seconds`,
:func:`medseg.planning.step_time.plan_training`).
:func:`write_plan` writes ``fingerprint.json`` and ``plan.yaml`` (text from
:mod:`medseg.planning.render`, which ``medseg train`` takes unchanged).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import UsageError, check_option
from medseg.planning import rules
from medseg.planning.design import CPU_WIDTH, LAYOUTS, WIDTH, Design, design, smallest_memory
from medseg.planning.fingerprint import Fingerprint, compute_fingerprint
from medseg.planning.step_time import OVERHEAD, measure_step_seconds, plan_training

__all__ = ["Plan", "PlanOptions", "make_plan", "make_plans", "write_plan"]

log = logging.getLogger(__name__)

GIB = 2**30
CPU_BUDGET_GB = 8.0
"""CPU plans: training memory budget in GiB (a laptop leaves about this much free)."""
GPU_USABLE = 0.85
"""Share of a GPU's memory a plan may fill (the CUDA context and cuDNN workspaces need the
rest)."""
#: Timed optimiser steps of a step-time measurement (their median counts) and the warm-up
#: steps before them: one timed step after one warm-up gave 117 and 41 epochs for the same
#: data on the same machine.
TIMED_STEPS, WARMUP_STEPS = 7, 3
#: Seconds of a time budget kept for starting ``medseg train`` and writing its last files.
START_MARGIN_S = 30.0
EPOCHS, ITERATIONS = 1000, 250
"""nnU-Net's schedule: 1000 epochs of 250 iterations."""
CPU_ITERATIONS = 50
"""Time-budgeted plans: iterations per epoch (validation and checkpoints every few minutes)."""
MIN_STEPS = 4100
"""The line of a time-budgeted plan (:func:`_shrink`): a candidate network fits when its
measured fp32 step fits at least this many steps in the budget (``3600 h / (step x
OVERHEAD)``: a step of at most 0.73 s in an hour); the probe trains within :data:`STEADY` of
it. la_mri on 2 CPU cores (bf16): the 56 x 56 x 40 patch at 1.41 mm (4 levels, 0.55-0.69 s a
step) reached held-out Dice 0.910, 0.911, 0.908, 0.891 and 0.904 on the five
cross-validation folds; the probe, 64 x 64 x 40 (5 levels; its step times under
:data:`STEADY`), 0.913, 0.909, 0.900 and 0.905 on folds 0, 1, 3 and 4 (mean 0.906 against
0.904 of 56 x 56 x 40 on the same folds; on fold 3 56 x 56 x 40 had a case leak into a
neighbouring chamber). Earlier: the 1.25 mm plan reached validation Dice 0.79 after 350
steps and kept rising; the 0.625 mm plan's 1400 slower steps reached 0.49."""
PROBE_BYTES = 512 * 2**20
""":func:`_shrink` starts at the first candidate of at most this estimated training memory
(cheap to time: la_mri's 0.44 GiB candidate takes 0.8 s a step), never at the memory-fitted
network (la_mri's 7 GiB patch took 26-53 s a step, and two plans in a row that timed it
chose different patches)."""
STEADY = 1.5
"""A time-budgeted plan trains the probe (the first candidate of at most :data:`PROBE_BYTES`)
as long as its measured fp32 step fits between ``MIN_STEPS / STEADY`` and
``MIN_STEPS x STEADY`` steps in the budget; only a machine clearly slower or faster than
that walks to a smaller or larger candidate (:func:`_shrink`). Without this band the
``MIN_STEPS`` line decided between two neighbouring candidates wherever a step lay near it:
la_mri's probe (64 x 64 x 40) measured 0.57-0.99 s a step on one 2-core host over four days
(0.57 s and 0.72 s in two plans an hour apart) against a line of 0.73 s, and two plans in a
row chose 64 x 64 x 40 (0.72 s) and 56 x 56 x 40 (the probe over 0.73 s). A factor of 1.5
covers that host's drift."""
MAX_SHRINK = 20
""":func:`_shrink`'s candidates go down to ``2 ** -(MAX_SHRINK / 2)`` of the memory-fitted
network's memory."""
MAX_COARSER = 6
"""Time-budgeted plans coarsen the spacing at most this many ``rules.LOWRES_FACTOR`` steps."""
BF16_GAIN = 1.25
"""Time-budgeted CPU plans train under bf16 autocast (``train.amp: true``) when the chosen
network's measured bf16 step is at least this many times faster than its fp32 step: a CPU
with native bf16 (AMX) trained la_mri's planned network (64x64x40, batch 2) in 0.40 s a step
against 0.88 s in fp32 on 2 cores, which doubles the optimiser steps of the hour; a CPU
without it emulates bf16 and is not timed at all."""


@dataclass(frozen=True)
class PlanOptions:
    """Hardware and time of a plan.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    ``gpu_memory_gb``: GiB the GPU offers (default: the device's memory).
    ``time_budget_h``: training hours; the schedule is fitted to a measured step time.
    ``layout``: ``3d``, ``slab`` or ``2d`` (:data:`medseg.planning.design.LAYOUTS`); None:
    ``slab`` above ``rules.ANISOTROPY_THRESHOLD``, else ``3d``.
    ``plan_2d``: :func:`write_plan` also writes ``plan_2d.yaml`` (nnU-Net's ``2d``) beside a
    3D or slab plan, as nnU-Net plans its 2d configuration beside 3d_fullres.
    """

    device: str = "auto"
    gpu_memory_gb: float | None = None
    time_budget_h: float | None = None
    seed: int = 0
    progress: bool = False
    layout: str | None = None
    plan_2d: bool = True


@dataclass(frozen=True)
class Plan:
    """Everything :func:`make_plan` decided (``render.plan_yaml`` writes it as YAML)."""

    fingerprint: Fingerprint
    manifest: Path
    device: str
    spacing_mm: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    design: Design
    budget_bytes: float
    intensity: dict[str, Any]
    epochs: int = EPOCHS
    iterations_per_epoch: int = ITERATIONS
    step_seconds: float | None = None
    time_budget_h: float | None = None
    reason: str = ""
    spacing_reason: str = ""
    val_every: int | None = None  # None: about 20 validations (no time budget)
    validation_seconds: float | None = None  # estimated seconds of one validation
    max_minutes: float | None = None  # the wall-clock contract of ``medseg train``
    plan_seconds: float | None = None  # what planning took of the budget
    cache_seconds: float | None = None  # estimated preprocessing-cache build (in the budget)
    alternatives: tuple[Plan, ...] = ()  # the plans written beside it (plan_2d.yaml)
    screen: tuple[str, ...] = ()  # layouts ``medseg train`` screens against it (train.select)
    screen_reason: str = ""  # why it screens them, or why not
    amp: bool | None = None  # train.amp: True = bf16 autocast on the CPU (None: the default)
    amp_reason: str = ""  # why (the measured steps of both precisions), or ""


def make_plan(manifest_path: str | os.PathLike, options: PlanOptions = PlanOptions()) -> Plan:
    """Plan the training of the dataset in ``manifest_path`` (see the module docstring).

    Raises
    ------
    DataError : cases with different channel counts or undeclared label values.
    UsageError : a GPU budget below the smallest network's need; a time budget shorter
        than one epoch (the message says what would fit); a bad option.
    """
    return make_plans(manifest_path, dataclasses.replace(options, plan_2d=False))[0]


def make_plans(manifest_path: str | os.PathLike, options: PlanOptions = PlanOptions()
               ) -> list[Plan]:
    """:func:`make_plan` of ``options.layout``, then (``options.plan_2d``, and that plan not
    2D) the ``2d`` plan of the same fingerprint. With a time budget, every plan's
    ``train.max_minutes`` is the budget less the planning of all of them."""
    from medseg.data.manifest import load_manifest

    if options.layout is not None:
        check_option(options.layout, LAYOUTS, "layout")
    started = time.monotonic()
    manifest = load_manifest(manifest_path)
    fp = compute_fingerprint(manifest, options.seed, progress=options.progress)
    fingerprint_s = time.monotonic() - started
    layout = options.layout or ("slab" if fp.anisotropy > rules.ANISOTROPY_THRESHOLD else "3d")
    layouts = [layout] + (["2d"] if options.plan_2d and layout != "2d" else [])
    plans = [_plan(fp, manifest.path, options, lay, started, fingerprint_s) for lay in layouts]
    if options.time_budget_h is not None and len(plans) > 1:
        plans = [_settle(plan, started) for plan in plans]
    if len(plans) > 1:
        plans[0] = _with_screening(plans[0], plans[1:])
    return plans


def _with_screening(plan: Plan, others: list[Plan]) -> Plan:
    """``plan`` with the layouts of ``others`` to screen against it within its time budget
    (``train.select``, :mod:`medseg.training.screening`), when the data is highly anisotropic
    by nnU-Net's criterion (:func:`rules.is_anisotropic`, on the median spacing, as its
    ``ExperimentPlanner`` tests it) and the plans share one grid; either way the one-line
    reason."""
    median = plan.fingerprint.median_spacing_mm
    layouts = ", ".join(o.design.layout for o in others)
    if plan.max_minutes is None:
        why = (f"no screening against {layouts}: no --time-budget to screen within (train "
               "both and compare by cross-validation)")
    elif not rules.is_anisotropic(median):
        why = (f"no screening against {layouts}: median spacing {_mm(median)} mm is not highly "
               f"anisotropic (coarsest <= {rules.ANISOTROPY_THRESHOLD:g} x the next, nnU-Net's "
               "criterion)")
    elif any(o.spacing_mm != plan.spacing_mm for o in others):
        why = (f"no screening against {layouts}: the plans' spacings differ, so their "
               "validation Dice would be measured on different grids")
    else:
        why = (f"median spacing {_mm(median)} mm is highly anisotropic (coarsest > "
               f"{rules.ANISOTROPY_THRESHOLD:g} x the next, nnU-Net's criterion): medseg train "
               f"screens {plan.design.layout} and {layouts} on the same split for "
               f"{rules.SCREEN_FRACTION:.0%} of the budget and continues the higher validation Dice")
        return dataclasses.replace(plan, screen=tuple(o.design.layout for o in others),
                                   screen_reason=why)
    return dataclasses.replace(plan, screen_reason=why)


def _plan(fp: Fingerprint, manifest: Path, options: PlanOptions, layout: str, started: float,
          fingerprint_s: float) -> Plan:
    """The plan of ``layout`` for fingerprint ``fp`` (planning began at ``started``)."""
    kind = _device_kind(options.device)
    budget = _budget_bytes(kind, options, manifest)
    spacing = rules.target_spacing(fp.spacings_mm, np.array([c.shape for c in fp.cases]))
    shapes = _resampled_shapes(fp, spacing)
    median = tuple(int(v) for v in np.median(np.array(shapes), axis=0))
    channels = (len(fp.channel_names), len(fp.label_names) + 1)
    voxels = float(sum(np.prod(s) for s in shapes)) if kind == "cuda" or layout == "2d" else None
    width = CPU_WIDTH if kind == "cpu" and options.time_budget_h is not None else WIDTH
    chosen = design(layout, median, spacing, channels, budget, voxels, width, kind == "cpu")
    if chosen is None:
        _too_small(budget, spacing, channels, manifest)
    if layout == "slab" and options.layout is None:
        reason = f"anisotropy {fp.anisotropy:.1f} > {rules.ANISOTROPY_THRESHOLD:g}"
    elif layout == "2d":
        reason = (f"nnU-Net's 2d: one slice across axis {chosen.slab_axis} (the coarsest), "
                  f"3x3 kernels in the slice")
    else:
        reason = ""
    plan = Plan(fp, manifest, kind, spacing, median, chosen, budget, _intensity(fp),
                reason=reason)
    if options.time_budget_h is not None:
        plan = _fit_time(plan, options, channels, voxels, started, fingerprint_s)
    return plan


def _settle(plan: Plan, started: float) -> Plan:
    """``plan`` with ``train.max_minutes`` recomputed now that every plan is made (the later
    plans' step measurements came out of the budget too); the schedule stays (the training
    clock stops it)."""
    plan_s = time.monotonic() - started
    run_s = float(plan.time_budget_h) * 3600.0 - plan_s - START_MARGIN_S
    return dataclasses.replace(plan, max_minutes=round(run_s / 60.0, 2), plan_seconds=plan_s)


def write_plan(manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
               options: PlanOptions = PlanOptions()) -> Plan:
    """:func:`make_plans`, then write ``fingerprint.json``, ``plan.yaml`` and (``plan_2d``)
    ``plan_2d.yaml`` into ``out_dir``; returns the plan of ``plan.yaml`` (the 2D one is its
    ``.alternatives``)."""
    import json

    from medseg.io.atomic import atomic_write_text
    from medseg.planning.render import plan_file, plan_yaml

    plan, *others = make_plans(manifest_path, options)
    out = Path(out_dir)
    atomic_write_text(out / "fingerprint.json", json.dumps(plan.fingerprint.to_dict(), indent=1))
    for other in others:
        atomic_write_text(out / plan_file(other.design.layout), plan_yaml(other))
    atomic_write_text(out / "plan.yaml", plan_yaml(plan))
    return dataclasses.replace(plan, alternatives=tuple(others))


def _resampled_shapes(fp: Fingerprint, spacing_mm) -> list[tuple[int, int, int]]:
    """Every case's shape (voxels) once resampled to ``spacing_mm``."""
    return [rules.resampled_shape(c.shape, c.spacing_mm, spacing_mm) for c in fp.cases]


# -- hardware ---------------------------------------------------------------------------------
def _device_kind(device: str) -> str:
    """``cpu`` or ``cuda``: the kind of device the plan is for (it need not be this one)."""
    import torch

    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu" or name == "cuda" or name.startswith("cuda:"):
        return "cpu" if name == "cpu" else "cuda"
    raise UsageError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


def _budget_bytes(kind: str, options: PlanOptions, manifest: Path) -> float:
    """Training memory a plan may use: ``CPU_BUDGET_GB`` on the CPU; on a GPU
    ``GPU_USABLE`` of ``--gpu-memory-gb`` or of the device's memory."""
    if kind == "cpu":
        return CPU_BUDGET_GB * GIB
    gb = options.gpu_memory_gb
    if gb is None:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{manifest}: planning for a GPU without one here: give "
                             "--gpu-memory-gb G (the GPU's memory in GiB) or --device cpu")
        index = torch.device(options.device).index or 0 if options.device != "auto" else 0
        gb = torch.cuda.get_device_properties(index).total_memory / GIB
    if not gb > 0:
        raise UsageError(f"--gpu-memory-gb {gb!r}: expected a positive number of GiB")
    return float(gb) * GPU_USABLE * GIB


def _too_small(budget: float, spacing, channels, manifest: Path) -> None:
    need = smallest_memory(spacing, channels) / GPU_USABLE / GIB
    raise UsageError(f"{manifest}: {budget / GPU_USABLE / GIB:.2f} GiB of GPU memory is less "
                     f"than the smallest network (8 x 8 x 8 patch, batch 2) needs: give "
                     f"--gpu-memory-gb {need:.2f} or more, or plan with --device cpu")


def _intensity(fp: Fingerprint) -> dict[str, Any]:
    """CT: clip to the foreground 0.5 / 99.5 percentiles, z-score with the foreground mean
    and std (nnU-Net's CTNormalization); otherwise a per-case z-score (``mr``)."""
    if not fp.is_ct:
        return {"mode": "mr"}
    c = fp.channels[0]
    return {"mode": "ct", "window": [round(c.p00_5, 2), round(c.p99_5, 2)],
            "mean_std": [round(c.mean, 3), round(max(c.std, 1e-3), 3)]}


# -- time ---------------------------------------------------------------------------------------
def _fit_time(plan: Plan, options: PlanOptions, channels, voxels, started: float,
              cache_s: float) -> Plan:
    """Fit the run into ``time_budget_h`` of wall time, planning included.

    The network is the probe, or where its measured fp32 step is far from fitting
    :data:`MIN_STEPS` steps the largest candidate that fits them (:func:`_shrink`), trained
    in bf16 where that is measured faster
    (:func:`_precision`). ``train.max_minutes`` is the budget less what planning took and
    :data:`START_MARGIN_S`; the schedule (:func:`~medseg.planning.step_time.plan_training`,
    ``CPU_ITERATIONS`` per epoch) fills it less the preprocessing cache (estimated as long as
    the fingerprint's read of every case: ``cache_s``) and the validations
    (:func:`rules.validation_seconds`, at most ``rules.MAX_VALIDATIONS`` and
    ``rules.VALIDATION_SHARE`` of the budget).
    """
    hours = options.time_budget_h
    if not (isinstance(hours, (int, float)) and hours > 0):
        raise UsageError(f"--time-budget {hours!r}: expected a positive number of hours")
    plan, step = _shrink(plan, options, channels, voxels, float(hours))
    plan, step = _precision(plan, options, step)
    plan_s = time.monotonic() - started
    run_s = float(hours) * 3600.0 - plan_s - START_MARGIN_S
    budget_s = run_s - cache_s
    validation_s = rules.validation_seconds(plan.median_shape, plan.design.patch, step,
                                            _validation_cases(plan.fingerprint),
                                            plan.design.batch_size)
    validations = rules.validations_in(budget_s, validation_s)
    train_s = max(budget_s - validations * validation_s,
                  budget_s * (1 - rules.VALIDATION_SHARE))  # one long validation: overrun
    epochs, per_epoch = (plan_training(step, train_s, EPOCHS, CPU_ITERATIONS) if train_s > 0
                         else (0, 0))  # planning alone spent the budget
    if per_epoch < CPU_ITERATIONS:
        per_hour = plan_training(step, 3600.0, 1, 10**12)[1]
        need = CPU_ITERATIONS / per_hour + (plan_s + cache_s + START_MARGIN_S) / 3600.0
        raise UsageError(f"{plan.manifest}: --time-budget {hours:g} h fits {per_epoch} steps of "
                         f"{step:.2f} s after {plan_s / 60:.1f} min of planning, one epoch is "
                         f"{CPU_ITERATIONS}: give --time-budget {need:.3g} or more (hours)")
    return dataclasses.replace(plan, epochs=epochs, iterations_per_epoch=per_epoch,
                               step_seconds=step, time_budget_h=float(hours),
                               val_every=max(1, math.ceil(epochs / validations)),
                               validation_seconds=validation_s,
                               max_minutes=round(run_s / 60.0, 2), plan_seconds=plan_s,
                               cache_seconds=cache_s)


def _precision(plan: Plan, options: PlanOptions, fp32_s: float) -> tuple[Plan, float]:
    """``plan`` with ``amp`` True and its bf16 step time when it runs on a CPU with native
    bf16 and the measured bf16 step is :data:`BF16_GAIN` times faster than ``fp32_s`` (its
    measured fp32 step, seconds); else ``plan`` (amp None: fp32 on the CPU) and ``fp32_s``.
    Autocast runs convolutions in bf16; weights, optimiser, loss and ``medseg predict`` stay
    fp32."""
    from medseg.runtime import cpu_has_native_bf16

    if plan.device != "cpu" or not cpu_has_native_bf16():
        return plan, fp32_s
    bf16_s = _measure(dataclasses.replace(plan, amp=True), options)
    if bf16_s * BF16_GAIN > fp32_s:
        why = (f"fp32: bf16 autocast took {bf16_s:.2f} s per step against {fp32_s:.2f} s, "
               f"less than {BF16_GAIN:g}x faster")
        return dataclasses.replace(plan, amp_reason=why), fp32_s
    why = (f"bf16 autocast: {bf16_s:.2f} s per step against {fp32_s:.2f} s in fp32 on this "
           f"CPU (native bf16): {fp32_s / bf16_s:.1f}x the steps in the budget; weights, "
           "loss and medseg predict stay fp32")
    return dataclasses.replace(plan, amp=True, amp_reason=why), bf16_s


def _shrink(plan: Plan, options: PlanOptions, channels, voxels, hours: float
            ) -> tuple[Plan, float]:
    """The candidate network to train in ``hours`` and its measured fp32 step (seconds).

    Candidate ``k`` is ``plan`` shrunk to ``2 ** (-k / 2)`` of the memory-fitted network's
    estimated training memory (:func:`_faster`: a smaller patch, a coarser spacing for
    context, a slab; a 2D plan's batch); ``k = 0`` is the memory-fitted network. Every
    candidate's step is timed robustly (:func:`_measure`: median of :data:`TIMED_STEPS` after
    :data:`WARMUP_STEPS`), beginning at the probe, the first of at most :data:`PROBE_BYTES`.
    The probe trains when its step fits :data:`MIN_STEPS` steps within a factor
    :data:`STEADY` either way; else the largest candidate that fits :data:`MIN_STEPS` steps
    (the smallest when none does): down by the memory the probe's time says is too much
    (time taken proportional to memory) until one fits, then up while the next larger one
    fits. The choice rests on timings of networks of the chosen size, never on one of a
    giant patch, and a step near the line does not move it, so two plans on one machine
    agree unless the machine's speed changes by about ``STEADY``.
    """
    made: dict[int, Plan] = {0: plan}
    timed: dict[tuple, float] = {}  # (spacing, design): seconds, once per distinct network
    limit_s = hours * 3600.0 / (OVERHEAD * MIN_STEPS)

    def candidate(k: int) -> tuple[Plan, float]:
        if k not in made:
            made[k] = _faster(plan, 2 ** (-k / 2), channels, voxels)
        key = (made[k].spacing_mm, made[k].design)
        if key not in timed:
            timed[key] = _measure(made[k], options)
        return made[k], timed[key]

    def fits(k: int) -> bool:
        return candidate(k)[1] <= limit_s

    k = max(0, math.ceil(2 * math.log2(plan.design.memory_bytes / PROBE_BYTES)))
    steady = limit_s / STEADY <= candidate(k)[1] <= limit_s * STEADY
    if not steady:
        while k < MAX_SHRINK and not fits(k):  # down by the memory the time says is too much
            k = min(MAX_SHRINK, k + max(1, round(2 * math.log2(candidate(k)[1] / limit_s))))
        while k > 0 and fits(k - 1):  # up while the next larger one fits
            k -= 1
    chosen, step = candidate(k)
    steps = plan_training(step, hours * 3600.0, 1, 10**12)[1]
    if steady:
        verdict = (f"the probe (the first candidate of at most {PROBE_BYTES / 2**30:g} GiB): "
                   f"its measured step ({step:.2f} s, fp32) fits {steps} steps in the budget, "
                   f"within {STEADY:g}x of {MIN_STEPS}")
    elif fits(k):
        verdict = (f"the largest candidate whose measured step ({step:.2f} s, fp32) fits "
                   f"{MIN_STEPS} steps in the budget ({steps})")
    else:
        verdict = (f"no candidate fits {MIN_STEPS} steps in the budget: the smallest "
                   f"({step:.2f} s, fp32, {steps} steps)")
    return dataclasses.replace(chosen, reason="; ".join(filter(None, (chosen.reason,
                                                                         verdict)))), step


def _validation_cases(fp: Fingerprint) -> int:
    """Cases one validation predicts: a fifth of the cohort (the held-out fold of 5, or the
    default 0.2 validation share), at least one."""
    return max(1, round(len(fp.cases) / 5))


def _faster(plan: Plan, share: float, channels, voxels) -> Plan:
    """A smaller patch of ``share`` of the current one's estimated memory; when that 3D
    patch would span less than ``rules.MIN_CONTEXT`` of the median image along an axis, a
    coarser spacing first (:func:`_coarser`); else a thin slab of that memory; else the
    smallest slab. A 2D plan keeps its slice and takes a smaller batch instead
    (:func:`_smaller_batch`)."""
    d = plan.design
    if d.layout == "2d":
        return _smaller_batch(plan, share)
    budget = d.memory_bytes * share
    why = f"{share:.3g} of the memory-fitted patch's memory"
    found = design(d.layout, plan.median_shape, plan.spacing_mm, channels, budget, voxels,
                   d.width)
    if found is not None and (d.layout != "3d" or _enough_context(found, plan.median_shape)):
        return dataclasses.replace(plan, design=found, reason=why)
    if d.layout == "3d":
        coarse = _coarser(plan, found, budget, channels, voxels)
        if coarse is not None:
            return dataclasses.replace(coarse, reason=why)
        if found is not None:
            return dataclasses.replace(plan, design=found, reason=why)
    smallest = smallest_memory(plan.spacing_mm, channels, d.width)
    tries = (("slab", budget, "no 3D patch fits the time budget"),
             ("slab", smallest, "the smallest slab is the fastest network"))
    for layout, bytes_, reason in tries:
        found = design(layout, plan.median_shape, plan.spacing_mm, channels, bytes_, voxels,
                       d.width)
        if found is not None:
            return dataclasses.replace(plan, design=found, reason=reason)
    return plan


def _smaller_batch(plan: Plan, share: float) -> Plan:
    """A 2D plan of ``share`` of its batch (rounded down, at least 2): the whole slice is
    the 2D configuration's context, so the patch stays."""
    from medseg.planning.design import design_memory

    d = plan.design
    batch = max(2, int(d.batch_size * share))
    if batch >= d.batch_size:
        return plan
    c = plan.fingerprint
    memory = design_memory(d, (len(c.channel_names), len(c.label_names) + 1), batch)
    why = f"{plan.reason}; batch {d.batch_size} -> {batch}"
    return dataclasses.replace(plan, design=dataclasses.replace(d, batch_size=batch,
                                                                memory_bytes=memory), reason=why)


def _enough_context(d: Design, median_shape) -> bool:
    return rules.context(d.patch, median_shape, d.slab_axis) >= rules.MIN_CONTEXT


def _coarser(plan: Plan, fine: Design | None, budget: float, channels, voxels) -> Plan | None:
    """The plan at the first coarser spacing (``rules.coarser_spacing``, up to
    ``MAX_COARSER`` steps) where the 3D patch of ``budget`` bytes spans at least
    ``rules.MIN_CONTEXT`` of the median resampled image along every axis (nnU-Net's
    3d_lowres idea: less resolution, more context); None when none does."""
    spacing = plan.spacing_mm
    seen = "no 3D patch" if fine is None else "x".join(map(str, fine.patch))
    share = 0.0 if fine is None else rules.context(fine.patch, plan.median_shape)
    for step in range(1, MAX_COARSER + 1):
        spacing = rules.coarser_spacing(spacing)
        median = tuple(int(v) for v in np.median(np.array(_resampled_shapes(
            plan.fingerprint, spacing)), axis=0))
        found = design("3d", median, spacing, channels, budget, voxels, plan.design.width)
        if found is None:
            return None
        if _enough_context(found, median):
            why = (f"at {_mm(plan.spacing_mm)} mm the patch the time budget allows ({seen}) "
                   f"spans {share:.0%} of the median image along an axis (< "
                   f"{rules.MIN_CONTEXT:.0%}): coarsened {step} x {rules.LOWRES_FACTOR:g} "
                   "for context (nnU-Net's 3d_lowres idea)")
            return dataclasses.replace(plan, spacing_mm=spacing, median_shape=median,
                                       design=found, spacing_reason=why)
    return None


def _mm(spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing)


def _measure(plan: Plan, options: PlanOptions, timed: int = TIMED_STEPS,
             warmup: int = WARMUP_STEPS) -> float:
    """Median seconds of one training step of ``plan``'s network on the planned device."""
    from medseg.config import parse_config
    from medseg.planning.render import plan_dict
    from medseg.runtime import Runtime

    cfg = parse_config(plan_dict(plan))
    runtime = Runtime.resolve(options.device if plan.device == "cuda" else "cpu", plan.amp)
    seconds = measure_step_seconds(cfg, runtime, steps=timed, warmup=warmup)
    log.info("patch %s, batch %d: %.2f s per step on %s", plan.design.patch,
             plan.design.batch_size, seconds, runtime)
    return seconds
