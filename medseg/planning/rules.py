"""The planning rules: pure functions of spacings and shapes, each checkable by hand.

They follow nnU-Net v2's published experiment planner (``ExperimentPlanner`` and
``get_pool_and_conv_props``, Isensee et al., Nature Methods 2021) unless a docstring
says otherwise. Axes are (x, y, z); spacings in mm, shapes and patches in voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "LOWRES_FACTOR",
    "MIN_CONTEXT",
    "MIN_FEATURE_MAP",
    "SCREEN_FRACTION",
    "SLAB_VOXELS",
    "batch_size",
    "coarser_spacing",
    "context",
    "divisor",
    "fit_patch",
    "is_anisotropic",
    "pooling",
    "resampled_shape",
    "round_up",
    "target_spacing",
]

Triple = tuple[int, int, int]

ANISOTROPY_THRESHOLD = 3.0
"""nnU-Net: data is anisotropic when its coarsest spacing exceeds 3x the others."""
MIN_FEATURE_MAP = 4
"""nnU-Net: no pooling that leaves a feature map under 4 voxels along an axis."""
SLAB_VOXELS = 5
"""Thin-slab layout: patches 5 slices thick along the coarse axis (the slice and 2 on each
side), never pooled along it."""
MAX_BATCH_SHARE = 0.05
"""nnU-Net: one batch covers at most 5 % of the dataset's voxels."""
MIN_CONTEXT = 0.5
"""A patch shorter than this share of the median image along an axis sees too little of it
(medseg's rule for time-budgeted plans: a coarser spacing is tried first). la_mri on 2 CPU
cores: a 48^3 patch at 0.625 mm (a quarter of the image along x) reached validation Dice
0.49 in an hour; 64 x 64 x 48 at 1.25 mm (two thirds) 0.79 in six minutes."""
LOWRES_FACTOR = 1.5
"""Spacing step of :func:`coarser_spacing` (nnU-Net's 3d_lowres uses 1.03 per step)."""
SCREEN_FRACTION = 0.2
"""Share of a time budget ``medseg train`` spends screening a plan against its 2D
alternative (``train.select``), split equally: the winner continues from its own screening,
so the choice costs it only the loser's share (a tenth of the budget for two plans).
medseg's rule; nnU-Net trains every configuration fully and compares them by 5-fold
cross-validation, which a time budget cannot afford."""


def is_anisotropic(spacing_mm: Sequence[float]) -> bool:
    """nnU-Net's test of anisotropic spacing (``ExperimentPlanner``'s ``has_aniso_spacing``):
    the coarsest spacing (mm) exceeds ``ANISOTROPY_THRESHOLD`` (3) times the next coarsest.

    >>> is_anisotropic((0.8, 0.8, 4.0)), is_anisotropic((0.5, 1.5, 4.0))
    (True, False)
    """
    ordered = sorted(float(s) for s in spacing_mm)
    return ordered[-1] > ANISOTROPY_THRESHOLD * ordered[-2]


def target_spacing(spacings_mm: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
    """The spacing every case is resampled to.

    Rule (nnU-Net): the median spacing per axis. When the data is anisotropic, i.e. the
    coarsest median spacing exceeds ``ANISOTROPY_THRESHOLD`` (3) times the largest other one
    *and* that axis has fewer than a third of the voxels of the smallest other axis (median
    shapes), the coarse axis gets the 10th percentile of its spacings instead (finer, so thin
    slices are not averaged away), but never less than the other axes' spacing.

    Parameters
    ----------
    spacings_mm : (N, 3) spacing of every case, mm.
    shapes : (N, 3) shape of every case, voxels.

    >>> target_spacing(np.array([[0.7, 0.7, 5.0], [0.7, 0.7, 4.0], [0.7, 0.7, 3.0]] * 3),
    ...                np.array([[128, 128, 16]] * 9))  # 10th percentile of z: 3.0
    (0.7, 0.7, 3.0)
    """
    spacings = np.asarray(spacings_mm, dtype=np.float64)
    target = np.median(spacings, axis=0)
    size = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    other_spacing = max(target[a] for a in others)
    aniso_voxels = size[worst] * ANISOTROPY_THRESHOLD < min(size[a] for a in others)
    if is_anisotropic(target) and aniso_voxels:
        target[worst] = max(float(np.percentile(spacings[:, worst], 10)), other_spacing)
    return tuple(round(float(v), 6) for v in target)  # type: ignore[return-value]


def resampled_shape(shape: Sequence[float], spacing_mm: Sequence[float],
                    target_mm: Sequence[float]) -> Triple:
    """Voxels of ``shape`` at ``spacing_mm`` once resampled to ``target_mm`` (rounded).

    >>> resampled_shape((100, 100, 20), (0.5, 0.5, 5.0), (1.0, 1.0, 2.5))
    (50, 50, 40)
    """
    return tuple(max(1, int(round(n * s / t)))  # type: ignore[return-value]
                 for n, s, t in zip(shape, spacing_mm, target_mm))


def pooling(spacing_mm: Sequence[float], patch: Sequence[int]) -> list[Triple]:
    """Pooling factor (x, y, z) of every downsampling step of a U-Net on ``patch``.

    Rule (nnU-Net ``get_pool_and_conv_props``): at each step, an axis is pooled (factor 2)
    when its feature map is at least ``2 * MIN_FEATURE_MAP`` voxels (so it stays >= 4) and
    its current spacing is within 2x of the finest current spacing among those axes (a
    coarse axis waits until pooling the others has brought their spacing close to its
    own). When only one axis qualifies it needs ``3 * MIN_FEATURE_MAP`` voxels. Pooling
    doubles the spacing and halves (rounding up) the feature map. Steps stop when no axis
    qualifies.

    >>> pooling((1.0, 1.0, 1.0), (32, 32, 16))  # z: 16 -> 8 -> 4, then x, y: 8 -> 4
    [(2, 2, 2), (2, 2, 2), (2, 2, 1)]
    >>> pooling((0.7, 0.7, 5.0), (128, 128, 16))  # z waits until x, y reach 2.8 mm
    [(2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1)]
    """
    spacing = [float(s) for s in spacing_mm]
    size = [float(p) for p in patch]
    steps: list[Triple] = []
    while True:
        axes = [a for a in range(3) if size[a] >= 2 * MIN_FEATURE_MAP]
        if not axes:
            break
        finest = min(spacing[a] for a in axes)
        axes = [a for a in axes if spacing[a] / finest < 2]
        if len(axes) == 1 and size[axes[0]] < 3 * MIN_FEATURE_MAP:
            break
        step = tuple(2 if a in axes else 1 for a in range(3))
        for a in axes:
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
        steps.append(step)  # type: ignore[arg-type]
    return steps


def divisor(pools: Sequence[Sequence[int]]) -> Triple:
    """Product of the pooling factors per axis: patches must be a multiple of it.

    >>> divisor([(2, 2, 1), (2, 2, 2)])
    (4, 4, 2)
    """
    return tuple(math.prod(p[a] for p in pools) for a in range(3))  # type: ignore[return-value]


def round_up(patch: Sequence[int], multiple: Sequence[int]) -> Triple:
    """Each axis rounded up to a multiple of ``multiple`` (nnU-Net's ``pad_shape``).

    >>> round_up((50, 50, 13), (16, 16, 4))
    (64, 64, 16)
    """
    return tuple(int(math.ceil(p / m) * m) for p, m in zip(patch, multiple))  # type: ignore


def fit_patch(start: Sequence[int], spacing_mm: Sequence[float],
              fits: Callable[[Triple, list[Triple]], bool], minimum: Sequence[int]
              ) -> tuple[Triple, list[Triple]] | None:
    """The largest patch from ``start`` that ``fits``, with its pooling.

    Rule: start from ``start`` (the median resampled shape) rounded up to a multiple of its
    pooling; while ``fits(patch, pools)`` is false, shrink the axis with the most voxels
    (ties: the first of x, y, z) by its current pooling multiple (so the patch stays a
    multiple of it; nnU-Net's step) and recompute the pooling. An axis is never shrunk
    below ``minimum``. None when even the smallest patch does not fit. nnU-Net shrinks the
    axis largest relative to the median shape instead; starting from the median shape both
    pick the same axis first.
    """
    patch = round_up(start, divisor(pooling(spacing_mm, start)))
    for _ in range(10_000):
        pools = pooling(spacing_mm, patch)
        if fits(patch, pools):
            return patch, pools
        candidates = [a for a in range(3)
                      if patch[a] - divisor(pools)[a] >= minimum[a]]
        if not candidates:
            return None
        axis = max(candidates, key=lambda a: (patch[a], -a))
        trial = list(patch)
        trial[axis] -= divisor(pools)[axis]
        step = divisor(pooling(spacing_mm, trial))[axis]
        trial[axis] = patch[axis] - step
        patch = round_up(trial, divisor(pooling(spacing_mm, trial)))
        if patch[axis] >= trial[axis] + step:  # rounding undid the step: take the smaller
            patch = tuple(trial)  # type: ignore[assignment]
    return None


def batch_size(budget_bytes: float, bytes_per_sample: float, patch: Sequence[int],
               dataset_voxels: float) -> int:
    """Patches per optimiser step.

    Rule (nnU-Net): as many as the memory budget holds, at most ``MAX_BATCH_SHARE`` (5 %)
    of the dataset's voxels per batch (rounded to the nearest, as nnU-Net's planner rounds
    it), and never fewer than 2 (instance statistics and the foreground oversampling need
    two). The memory share is rounded down: a budget is a limit.

    >>> batch_size(10e9, 1e9, (64, 64, 64), 1e9)  # 10 fit; 5 % of 1e9 = 190 patches
    10
    >>> batch_size(10e9, 1e9, (64, 64, 64), 2e7)  # 5 % of 2e7 voxels: 3.8 patches
    4
    """
    by_memory = int(budget_bytes // bytes_per_sample)
    by_data = round(MAX_BATCH_SHARE * dataset_voxels / math.prod(patch))
    return max(2, min(by_memory, by_data))


def coarser_spacing(spacing_mm: Sequence[float], factor: float = LOWRES_FACTOR
                    ) -> tuple[float, float, float]:
    """One step of nnU-Net's 3d_lowres spacing search (``ExperimentPlanner``).

    Rule: when the coarsest axis is more than 2x another, only the axes whose spacing times
    ``factor`` stays below the coarsest one grow (the fine axes catch up); otherwise every
    axis is multiplied by ``factor``.

    >>> coarser_spacing((0.625, 0.625, 1.25))  # 2x, not more: every axis
    (0.9375, 0.9375, 1.875)
    >>> coarser_spacing((0.7, 0.7, 5.0))  # anisotropic: x and y only
    (1.05, 1.05, 5.0)
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    coarsest = float(spacing.max())
    if np.any(coarsest / spacing > 2):
        grow = spacing * factor < coarsest
        spacing = np.where(grow, spacing * factor, spacing)
    else:
        spacing = spacing * factor
    return tuple(round(float(v), 6) for v in spacing)  # type: ignore[return-value]


def context(patch: Sequence[int], shape: Sequence[int], skip_axis: int | None = None) -> float:
    """The smallest share of ``shape`` (voxels) the patch spans along an axis (capped at 1);
    ``skip_axis`` (a thin slab's axis) is not counted.

    >>> context((40, 40, 40), (192, 142, 88))  # x: 40 / 192
    0.208
    """
    shares = [min(1.0, p / s) for a, (p, s) in enumerate(zip(patch, shape)) if a != skip_axis]
    return round(min(shares), 3) if shares else 1.0


#: Time-budgeted plans validate at most this many times, and spend at most this share of
#: the budget on it (each validation predicts whole cases with the sliding window).
MAX_VALIDATIONS = 5
VALIDATION_SHARE = 0.25
#: A forward pass costs about a third of a training step (forward + backward), per patch.
FORWARD_SHARE = 1 / 3


def validation_seconds(median_shape: Sequence[int], patch: Sequence[int], step_s: float,
                       cases: int, batch: int = 2) -> float:
    """Estimated seconds of one validation: ``cases`` images of ``median_shape`` voxels,
    sliding windows of ``patch`` at overlap 0.5, each a forward pass of
    ``FORWARD_SHARE * step_s / batch`` (``step_s``: a measured training step of ``batch``
    patches).

    >>> round(validation_seconds((128, 95, 59), (40, 48, 48), 1.31, 16), 1)  # 36 windows/case
    125.8
    """
    from medseg.inference.windows import window_starts

    windows = 1
    for n, r in zip(median_shape, patch):
        windows *= len(window_starts(int(n), int(r), 0.5))
    return cases * windows * FORWARD_SHARE * step_s / batch


def validations_in(budget_s: float, validation_s: float) -> int:
    """How many validations a time-budgeted plan runs: ``MAX_VALIDATIONS``, fewer when they
    would take more than ``VALIDATION_SHARE`` of ``budget_s``; at least one (the last epoch).

    >>> validations_in(3600, 126), validations_in(3600, 600), validations_in(600, 900)
    (5, 1, 1)
    """
    fits = int(VALIDATION_SHARE * budget_s // max(validation_s, 1e-9))
    return max(1, min(MAX_VALIDATIONS, fits))
