"""The network design of a plan: layout, patch, pooling, batch size and their memory.

A :class:`Design` is the part of a plan that depends on the hardware: the patch is shrunk
from the median resampled shape until the estimated training memory
(:func:`medseg.planning.memory.training_memory_bytes`) fits the budget.

Layouts: ``3d`` (nnU-Net's 3d_fullres), ``slab`` (a patch ``rules.SLAB_VOXELS`` slices thick
along the coarsest axis, never pooled along it, 3 x 3 x 3 kernels) and ``2d`` (nnU-Net's
``2d``: one-slice patches across the coarsest axis, 3 x 3 x 1 kernels, so ``unet3d`` is a
per-slice 2D U-Net, with nnU-Net's 2D initial patch, widths up to 512 and large batches).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from medseg.planning import rules
from medseg.planning.memory import training_memory_bytes

__all__ = ["CPU_WIDTH", "Design", "LAYOUTS", "design", "design_kwargs", "design_memory",
           "initial_patch", "model_kwargs", "smallest_memory"]

LAYOUTS = ("3d", "slab", "2d")
WIDTH = 32
"""nnU-Net's features at full resolution (doubled per level up to ``MAX_WIDTH``)."""
CPU_WIDTH = 16
"""Time-budgeted CPU plans: half nnU-Net's width. A convolution costs width squared, and on
2 cores the 64 x 64 x 48 batch-2 step of width 16 took 0.99 s against width 32's 2.4 s
(la_mri at 1.25 mm): more steps in the hour matter more than width there."""
MAX_WIDTH = 320
MAX_WIDTH_2D = 512
"""nnU-Net's cap on a 2D U-Net's features (``UNet_max_features_2d``)."""
NNUNET_PATCH_PIXELS_2D = 2048**2
"""nnU-Net's initial 2D patch holds at most 2048^2 pixels (shaped by the spacing)."""
NNUNET_BATCH_2D = 12
"""nnU-Net's 2D reference batch (``UNet_reference_val_corresp_bs_2d``, at its 8 GB
reference): the largest batch of a CPU 2D plan, where a larger batch costs time, not
memory."""
MIN_PATCH = 8
"""Smallest patch edge (voxels): one pooling step to 4 voxels."""
NNUNET_PATCH_VOXELS = 256**3
"""nnU-Net's initial 3D patch holds at most 256^3 voxels (shaped by the spacing)."""
Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Design:
    """Layout (``3d``, ``slab`` along ``slab_axis`` or ``2d``: slices across ``slab_axis``),
    patch (x, y, z) voxels, pooling per step, batch size, and the estimated training memory
    (bytes) of that batch."""

    layout: str
    patch: Triple
    pools: tuple[Triple, ...]
    batch_size: int
    memory_bytes: int
    slab_axis: int | None = None
    width: int = WIDTH


def model_kwargs(pools: Sequence[Sequence[int]], width: int = WIDTH,
                 slice_axis: int | None = None) -> dict:
    """``unet3d`` arguments of a plan: ``width`` features at full resolution (nnU-Net's
    32 by default) doubled per level up to ``MAX_WIDTH``, one pooling factor per step, and
    deep supervision on every level but the two coarsest (at least one). ``slice_axis``
    (a ``2d`` design): kernels 1 along it (3 x 3 in the slice) and widths up to
    ``MAX_WIDTH_2D``, nnU-Net's 2D U-Net.

    >>> model_kwargs([(2, 2, 1)], 16, slice_axis=2)["kernel"]
    [3, 3, 1]
    """
    depth = len(pools) + 1
    out = {"depth": depth, "width": int(width), "max_width": MAX_WIDTH,
           "pool": [list(p) for p in pools], "ds_levels": max(1, depth - 2)}
    if slice_axis is not None:
        out.update(max_width=MAX_WIDTH_2D,
                   kernel=[1 if a == slice_axis else 3 for a in range(3)])
    return out


def design_kwargs(d: Design) -> dict:
    """:func:`model_kwargs` of a :class:`Design`."""
    return model_kwargs(d.pools, d.width, d.slab_axis if d.layout == "2d" else None)


def initial_patch(median_shape: Sequence[int], spacing_mm: Sequence[float], layout: str,
                  slab_axis: int) -> Triple:
    """The patch before shrinking.

    3D: the median resampled shape, capped per axis by nnU-Net's initial patch (256^3
    voxels, edges proportional to 1 / spacing, so equal in mm). Slab: the median shape with
    ``rules.SLAB_VOXELS`` along ``slab_axis``. 2D: one voxel along ``slab_axis``; in the
    slice the median shape capped by nnU-Net's initial 2D patch (2048^2 pixels, edges
    proportional to 1 / spacing).

    >>> initial_patch((300, 300, 300), (1.0, 1.0, 2.0), "3d", 2)  # 323 x 323 x 161, capped
    (300, 300, 161)
    >>> initial_patch((3000, 300, 40), (0.5, 2.0, 5.0), "2d", 2)  # 4096 x 1024 in the slice
    (3000, 300, 1)
    """
    shape = [int(s) for s in median_shape]
    if layout == "slab":
        shape[slab_axis] = min(shape[slab_axis], rules.SLAB_VOXELS)
        return tuple(shape)  # type: ignore[return-value]
    if layout == "2d":
        plane = [a for a in range(3) if a != slab_axis]
        inv = [1.0 / spacing_mm[a] for a in plane]
        scale = (NNUNET_PATCH_PIXELS_2D / math.prod(inv)) ** 0.5
        for a, i in zip(plane, inv):
            shape[a] = min(shape[a], int(round(i * scale)))
        shape[slab_axis] = 1
        return tuple(shape)  # type: ignore[return-value]
    inv = [1.0 / s for s in spacing_mm]
    scale = (NNUNET_PATCH_VOXELS / math.prod(inv)) ** (1 / 3)
    return tuple(min(n, int(round(i * scale))) for n, i in zip(shape, inv))  # type: ignore


def design(layout: str, median_shape: Sequence[int], spacing_mm: Sequence[float],
           channels: tuple[int, int], budget_bytes: float, dataset_voxels: float | None,
           width: int = WIDTH, cpu: bool = False) -> Design | None:
    """The largest patch of ``layout`` whose training memory at batch 2 fits ``budget_bytes``.

    ``channels`` is (image channels C, classes K); ``width``: the network's features at
    full resolution. ``dataset_voxels``: the batch grows
    with leftover memory up to 5 % of them (:func:`rules.batch_size`); None keeps batch 2
    (3D CPU plans, where a bigger batch costs time; a 2D CPU plan takes the batch of
    ``rules.batch_size`` up to ``NNUNET_BATCH_2D``). None when nothing fits.

    The slab or slice axis is the coarsest (ties: the last), as nnU-Net's transpose puts
    first the axis its 2d configuration slices across.
    """
    slab_axis = max(range(3), key=lambda a: (spacing_mm[a], a))
    start = initial_patch(median_shape, spacing_mm, layout, slab_axis)
    minimum = [min(MIN_PATCH, s) for s in start]
    slice_axis = slab_axis if layout == "2d" else None

    def memory(patch: Triple, pools: list[Triple], batch: int) -> int:
        return _memory(tuple(map(tuple, pools)), int(width), slice_axis, tuple(channels),
                       tuple(patch), batch)

    def fits(patch: Triple, pools: list[Triple]) -> bool:
        return bool(pools) and memory(patch, pools, 2) <= budget_bytes

    found = rules.fit_patch(start, spacing_mm, fits, minimum)
    if found is None:
        return None
    patch, pools = found
    batch = 2
    if dataset_voxels is not None:
        batch = rules.batch_size(budget_bytes, memory(patch, pools, 1), patch, dataset_voxels)
        if layout == "2d" and cpu:
            batch = max(2, min(batch, NNUNET_BATCH_2D))
    return Design(layout, patch, tuple(pools), batch, memory(patch, pools, batch),
                  slab_axis if layout in ("slab", "2d") else None, int(width))


@functools.lru_cache(maxsize=8192)
def _memory(pools: tuple[Triple, ...], width: int, slice_axis: int | None,
            channels: tuple[int, int], patch: Triple, batch: int) -> int:
    """Training memory (bytes) of the ``unet3d`` of ``pools``, ``width`` and ``slice_axis``
    on ``patch`` (x, y, z voxels) and ``batch``, remembered: a time-budgeted plan designs
    several candidates whose shrinking (:func:`rules.fit_patch`) walks the same patches (on
    la_mri each candidate took 1.5-8 s of estimates before)."""
    return training_memory_bytes("unet3d", model_kwargs(pools, width, slice_axis), *channels,
                                 patch, batch)


def design_memory(d: Design, channels: tuple[int, int], batch: int) -> int:
    """Training memory (bytes) of ``d``'s network on its patch at ``batch``; ``channels``
    is (image channels C, classes K)."""
    slice_axis = d.slab_axis if d.layout == "2d" else None
    return _memory(tuple(map(tuple, d.pools)), d.width, slice_axis, tuple(channels),
                   tuple(d.patch), batch)


def smallest_memory(spacing_mm: Sequence[float], channels: tuple[int, int],
                    width: int = WIDTH) -> int:
    """Training memory (bytes, batch 2) of the smallest network of ``width`` a plan would
    build."""
    patch = (MIN_PATCH,) * 3
    pools = rules.pooling(spacing_mm, patch) or [(2, 2, 2)]
    return _memory(tuple(map(tuple, pools)), int(width), None, tuple(channels), patch, 2)
