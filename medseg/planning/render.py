"""A :class:`~medseg.planning.plan.Plan` as a pipeline YAML with a ``# reason`` per choice,
as the same mapping (:func:`plan_dict`) and as a printed summary.

One list of (section, key, value, reason) entries makes all three, so the comments cannot
drift from the values. Values are written as JSON, which YAML reads unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from medseg.planning import rules
from medseg.planning.design import CPU_WIDTH, MAX_WIDTH, MAX_WIDTH_2D, design_kwargs

__all__ = ["format_summary", "plan_dict", "plan_file", "plan_yaml"]

Entry = tuple[str, str, Any, str]

def _geometry(plan) -> list[Entry]:
    fp, d = plan.fingerprint, plan.design
    median = "x".join(f"{s:g}" for s in fp.median_spacing_mm)
    spacing_why = plan.spacing_reason or (
        f"median spacing {median} mm" if tuple(fp.median_spacing_mm) == tuple(plan.spacing_mm)
        else f"median {median} mm, coarse axis at the 10th percentile of its spacings "
        "(anisotropic data, nnU-Net)")
    mode = plan.intensity["mode"]
    norm_why = ("CT: clip to the foreground 0.5/99.5 percentiles, z-score with the foreground "
                "mean/std (nnU-Net)" if mode == "ct" else
                f"{'/'.join(fp.channel_names)}: z-score per case and channel (nnU-Net's non-CT "
                "normalisation, inside image > 0)")
    return [
        ("data", "manifest", str(plan.manifest.resolve()), "the planned dataset"),
        ("data", "val_fraction", 0.2, "held-out share for validation when no split is given"),
        ("preprocessing", "orientation", "RAS", "one axis order for every case"),
        ("preprocessing", "spacing_mm", list(plan.spacing_mm), spacing_why),
        ("preprocessing", "intensity", plan.intensity, norm_why),
        ("preprocessing", "crop_foreground", False, "nnU-Net crops only zero borders"),
        ("model", "name", "unet3d", f"nnU-Net's plain U-Net ({d.layout} layout)"),
        ("model", "kwargs", design_kwargs(d), _pool_why(plan)),
        ("loss", "name", "dice_ce", "nnU-Net's Dice + cross-entropy"),
    ]


def _pool_why(plan) -> str:
    d = plan.design
    top = MAX_WIDTH_2D if d.layout == "2d" else MAX_WIDTH
    base = (f"widths {d.width}..{top}; pool an axis while its feature map stays >= "
            f"{rules.MIN_FEATURE_MAP} voxels and its spacing is within 2x of the finest")
    if d.width == CPU_WIDTH:
        base += ("; half nnU-Net's width: a time-budgeted CPU plan buys optimiser steps "
                 "(a convolution costs width squared)")
    if d.layout == "slab":
        base += f"; thin slab: axis {d.slab_axis} never pooled"
    if d.layout == "2d":
        base += (f"; 2D U-Net (nnU-Net's 2d): kernels 1 and no pooling along axis "
                 f"{d.slab_axis}, each slice alone")
    return base


def _contract(plan) -> str:
    """Why ``train.max_minutes`` has its value (or why there is none)."""
    if plan.max_minutes is None:
        return "no wall-clock limit (no --time-budget given)"
    return (f"--time-budget {plan.time_budget_h:g} h less {plan.plan_seconds / 60:.1f} min of "
            f"planning and a start margin: training (its data cache, about "
            f"{plan.cache_seconds / 60:.1f} min, included) stops, validates and saves within it "
            f"on any machine")


def plan_file(layout: str) -> str:
    """The file name of a plan written beside ``plan.yaml``: ``plan_<layout>.yaml``."""
    return f"plan_{layout}.yaml"


def _select(plan) -> list[Entry]:
    """``train.select`` (the plans screened against this one), with its reason; nothing for
    a plan written beside another."""
    if not plan.screen_reason:
        return []
    value = ({"candidates": [plan_file(layout) for layout in plan.screen],
              "screen_fraction": rules.SCREEN_FRACTION} if plan.screen else None)
    return [("train", "select", value, plan.screen_reason)]


def _training(plan) -> list[Entry]:
    d = plan.design
    gib = d.memory_bytes / 2**30
    if plan.step_seconds is None:
        schedule_why = "nnU-Net's schedule (no --time-budget given)"
    else:
        schedule_why = (f"{plan.step_seconds:.2f} s per step measured on {plan.device}: fits "
                        f"--time-budget {plan.time_budget_h:g} h")
    patch_why = (f"median resampled shape {'x'.join(map(str, plan.median_shape))}, shrunk "
                 f"to {gib:.2f} GiB of {plan.budget_bytes / 2**30:.1f} GiB ({plan.device})")
    if plan.reason:
        patch_why += f"; {plan.reason}"
    return [
        ("train", "patch_size", list(d.patch), patch_why),
        ("train", "batch_size", d.batch_size, _batch_why(plan)),
        ("train", "epochs", plan.epochs, schedule_why),
        ("train", "iterations_per_epoch", plan.iterations_per_epoch, schedule_why),
        ("train", "val_every", *_validation(plan)),
        ("train", "max_minutes", plan.max_minutes, _contract(plan)),
        ("train", "fill_budget", plan.max_minutes is not None,
         "the budget is the schedule: a faster machine trains on past the planned epochs, the "
         "rate decays with the budget's share" if plan.max_minutes is not None
         else "no budget: the epochs are the schedule"),
        *_select(plan),
        ("train", "amp", plan.amp, plan.amp_reason or (
            "medseg.runtime's default: bf16 or fp16 autocast on a GPU, fp32 on the CPU")),
        ("train", "calibrate", True,
         "end by calibrating best on the validation cases (temperature and QC's reference "
         "for --qc), inside the budget"),
        ("train", "optimizer", "sgd", "nnU-Net: SGD, Nesterov momentum 0.99"),
        ("train", "lr", 0.01, "nnU-Net's initial learning rate"),
        ("train", "momentum", 0.99, "nnU-Net"),
        ("train", "weight_decay", 3e-5, "nnU-Net"),
        ("train", "schedule", "poly", "nnU-Net: lr * (1 - t)^0.9"),
        ("train", "grad_clip", 12.0, "nnU-Net clips the gradient norm at 12"),
        ("train", "foreground_ratio", 0.33, "nnU-Net: a third of patches centred on foreground"),
        ("train", "deep_supervision", True, "nnU-Net: loss on the coarser decoder outputs too"),
        ("train", "num_workers", 4 if plan.device == "cuda" else 0,
         "GPU: load patches in parallel" if plan.device == "cuda" else "CPU: the cores train"),
        ("train", "augment", _augment(d), "nnU-Net's recipe: rotation, scaling, mirroring, "
         "noise, blur, brightness, contrast, low resolution, gamma and inverted gamma; "
         "no rotation for a thin slab or 2D slices (medseg rotates about every axis)"),
    ]


def _batch_why(plan) -> str:
    if plan.device == "cuda":
        return "what the memory holds, >= 2, <= 5 % of the dataset's voxels"
    if plan.design.layout == "2d":
        return ("slices: what the memory holds, >= 2, <= 5 % of the dataset's voxels and, "
                "on a CPU, <= nnU-Net's 2D reference batch of 12")
    return "2 (nnU-Net's minimum): on a CPU a larger batch costs time"


def _augment(design) -> dict[str, Any]:
    """nnU-Net v2's probabilities and ranges (``AugmentConfig``'s defaults where they agree);
    medseg's additive intensity change off (nnU-Net has none)."""
    from medseg.data.augment_config import AugmentConfig

    slab = design.layout in ("slab", "2d")
    out = dataclasses.asdict(AugmentConfig())
    out.update({"affine_prob": 0.2, "rotate_deg": 0.0 if slab else 30.0, "scale": 0.3,
                "intensity_prob": 0.0, "gamma_prob": 0.3})
    return out


def _inference(plan) -> list[Entry]:
    d = plan.design
    gpu = plan.device == "cuda"
    mirror = [a for a in range(3) if a != d.slab_axis] if gpu else []
    return [
        ("inference", "roi_size", list(d.patch), "the training patch"),
        ("inference", "overlap", 0.5, "nnU-Net: half-window steps, Gaussian weights"),
        ("inference", "blend", "gaussian", "nnU-Net"),
        ("inference", "batch_size", d.batch_size if d.layout == "2d" else 2,
         "windows (slices) per network call: the training batch" if d.layout == "2d"
         else "windows per network call"),
        ("inference", "mirror_axes", mirror, "nnU-Net mirrors every axis at test time" if gpu
         else "CPU: no mirroring by default (8x slower); medseg predict --tta turns it on"),
        ("inference", "keep_largest", False, "post-processing is chosen by cross-validation, "
         "not by the plan"),
    ]


def _entries(plan) -> list[Entry]:
    return _geometry(plan) + _training(plan) + _inference(plan)


def plan_dict(plan) -> dict[str, Any]:
    """The plan as the mapping :func:`medseg.config.parse_config` takes."""
    out: dict[str, Any] = {}
    for section, key, value, _ in _entries(plan):
        out.setdefault(section, {})[key] = value
    return out


def plan_yaml(plan) -> str:
    """The pipeline YAML text: a header, then ``key: value  # reason`` per choice."""
    fp = plan.fingerprint
    lines = [f"# medseg plan of {plan.manifest}",
             f"# {len(fp.cases)} training cases, {'/'.join(fp.channel_names)}, "
             f"{len(fp.label_names)} labels, anisotropy {fp.anisotropy:.2f}",
             "#   medseg train plan.yaml -o RUN_DIR"
             + (" --device cpu" if plan.device == "cpu" else "")]
    section = None
    for sec, key, value, reason in _entries(plan):
        if sec != section:
            lines.append(f"{sec}:")
            section = sec
        lines.append(f"  {key}: {json.dumps(value)}  # {reason}")
    return "\n".join(lines) + "\n"


def format_summary(plan) -> str:
    """A few lines for the terminal: geometry, network, schedule."""
    fp, d = plan.fingerprint, plan.design
    steps = plan.epochs * plan.iterations_per_epoch
    lines = [
        f"cases: {len(fp.cases)}  channels: {', '.join(fp.channel_names)}  labels: "
        f"{len(fp.label_names)}  anisotropy: {fp.anisotropy:.2f}",
        f"spacing: {' x '.join(f'{s:g}' for s in plan.spacing_mm)} mm  median resampled "
        f"shape: {' x '.join(map(str, plan.median_shape))}  intensity: {plan.intensity['mode']}",
        f"layout: {d.layout}  patch: {' x '.join(map(str, d.patch))}  batch: {d.batch_size}  "
        f"levels: {len(d.pools) + 1}  pooling: {[list(p) for p in d.pools]}",
        f"memory: {d.memory_bytes / 2**30:.2f} GiB of {plan.budget_bytes / 2**30:.1f} GiB "
        f"({plan.device})  schedule: {plan.epochs} x {plan.iterations_per_epoch} = {steps} steps"
        + (f" at {plan.step_seconds:.2f} s" if plan.step_seconds else "")
        + (" (bf16 autocast)" if plan.amp else ""),
    ]
    if plan.spacing_reason:
        lines.append(f"spacing: {plan.spacing_reason}")
    if plan.screen_reason:
        lines.append(f"selection: {plan.screen_reason}")
    if plan.max_minutes is not None:
        lines.append(f"time: planning took {plan.plan_seconds / 60:.1f} min; medseg train stops, "
                     f"validates and saves within train.max_minutes = {plan.max_minutes:g} min")
    return "\n".join(lines)


def _validation(plan) -> tuple[int, str]:
    """``val_every`` and its reason: about 20 validations, or the time-budgeted count."""
    if plan.val_every is None:
        return max(1, plan.epochs // 20), "about 20 validations in all"
    n = math.ceil(plan.epochs / plan.val_every)
    return plan.val_every, (f"{n} validations of about {plan.validation_seconds / 60:.1f} min "
                            "each, taken out of the time budget before the schedule")
