"""Patch sampling from cached cases: uniform and label-balanced, seeded, padded.

:class:`PatchSampler` picks a patch in one case; :class:`PatchDataset` is the
map-style torch dataset that a ``DataLoader`` (with workers) draws from.

Determinism: patch ``i`` of epoch ``e`` on rank ``r`` uses its own NumPy
generator seeded with ``(seed, e, r, i)``. The patch stream therefore depends
on the seed, the epoch and the rank only -- not on the number of DataLoader
workers nor on which worker draws it -- and resuming at epoch ``e`` redraws
exactly the same patches (the sampler state is just the epoch).

Balanced sampling follows nnU-Net's oversampling: with probability
``foreground_ratio`` the patch is centred on a random voxel of a random
foreground label present in the case, otherwise it lies anywhere; or, with
``class_probabilities`` (one per class, background first), a class is drawn
first and the centre is a random voxel of that class (background: anywhere).
A patch is padded (image: the case's per-channel minimum, label: 0) where it
extends past the volume, e.g. when the case is smaller than the patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medseg.data.cache import CachedCase
from medseg.errors import UsageError

__all__ = ["PatchSampler", "PatchDataset", "crop_padded", "collate_batch"]


def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int],
                pad_value: float | Sequence[float] = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Copy ``array[..., start:start+size]`` over the last three axes, padding outside.

    ``start`` may be negative or run past the end; the result always has spatial
    shape ``size``. ``pad_value`` is a scalar or one value per leading channel.
    ``out`` (optional) receives the patch, e.g. a slot of a batch buffer: every
    voxel is written once (inside copied, outside filled), nothing more.
    """
    spatial = array.shape[-3:]
    size = tuple(int(s) for s in size)
    if out is None:
        out = np.empty(tuple(array.shape[:-3]) + size, dtype=array.dtype)
    src, dst = [], []
    for a in range(3):
        lo = min(max(int(start[a]), 0), spatial[a])
        hi = max(min(int(start[a]) + size[a], spatial[a]), lo)
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(start[a]), hi - int(start[a])))
    if any(d.stop <= d.start for d in dst):
        _fill(out, (Ellipsis,), pad_value)
        return out
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    _fill_outside(out, dst, size, pad_value)
    return out


def _fill(out: np.ndarray, index: tuple, pad_value: float | Sequence[float]) -> None:
    """``out[index] = pad_value``; ``index`` is ``(Ellipsis, *spatial slices)``."""
    if np.ndim(pad_value) == 0:
        out[index] = pad_value
    else:  # one value per channel of a (C, x, y, z) patch
        for c, value in enumerate(pad_value):
            out[c][(Ellipsis, *index[1:])] = value


def _fill_outside(out: np.ndarray, box: list[slice], size: tuple[int, ...],
                  pad_value: float | Sequence[float]) -> None:
    """Fill the voxels of ``out`` outside ``box`` (at most six slabs) with ``pad_value``."""
    inner: list[slice] = [slice(None)] * 3
    for a in range(3):
        for part in (slice(0, box[a].start), slice(box[a].stop, size[a])):
            if part.stop > part.start:
                index = list(inner)
                index[a] = part
                _fill(out, (Ellipsis, *index), pad_value)
        inner[a] = box[a]


class PatchSampler:
    """Choose where a patch of ``patch_size`` voxels (x, y, z) lies in a cached case.

    Parameters
    ----------
    patch_size : (x, y, z) in voxels, each > 0.
    foreground_ratio : share of patches centred on foreground, in [0, 1]
        (0 = uniform sampling). Ignored when ``class_probabilities`` is given.
    class_probabilities : optional, one probability per class (background first),
        summing to 1.
    """

    def __init__(self, patch_size: Sequence[int], foreground_ratio: float = 0.33,
                 class_probabilities: Sequence[float] | None = None) -> None:
        size = tuple(int(s) for s in patch_size)
        if len(size) != 3 or min(size) <= 0:
            raise UsageError(f"patch_size must be three positive voxel counts, got {patch_size!r}")
        if not 0.0 <= foreground_ratio <= 1.0:
            raise UsageError(f"foreground_ratio must be in [0, 1], got {foreground_ratio!r}")
        if class_probabilities is not None:
            probs = np.asarray(class_probabilities, dtype=np.float64)
            if probs.ndim != 1 or probs.min() < 0 or abs(probs.sum() - 1.0) > 1e-6:
                raise UsageError("class_probabilities must be non-negative and sum to 1, got "
                                 f"{list(class_probabilities)}")
            self.class_probabilities: np.ndarray | None = probs
        else:
            self.class_probabilities = None
        self.patch_size = size
        self.foreground_ratio = float(foreground_ratio)

    def _uniform_start(self, shape: Sequence[int], rng: np.random.Generator) -> list[int]:
        starts = []
        for s, p in zip(shape, self.patch_size):
            starts.append(int(rng.integers(0, s - p + 1)) if s >= p else -((p - s) // 2))
        return starts

    def _start_around(self, centre: Sequence[int], shape: Sequence[int]) -> list[int]:
        starts = []
        for c, s, p in zip(centre, shape, self.patch_size):
            start = int(c) - p // 2
            starts.append(min(max(start, 0), s - p) if s >= p else -((p - s) // 2))
        return starts

    def choose_class(self, case: CachedCase, rng: np.random.Generator) -> int:
        """The label to centre on (0 = anywhere)."""
        present = sorted(case.classes)
        if self.class_probabilities is not None:
            value = int(rng.choice(len(self.class_probabilities), p=self.class_probabilities))
            if value == 0 or value in case.classes:
                return value
            return int(present[rng.integers(len(present))]) if present else 0
        if present and rng.random() < self.foreground_ratio:
            return int(present[rng.integers(len(present))])
        return 0

    def start(self, case: CachedCase, rng: np.random.Generator) -> list[int]:
        """Patch start (x, y, z) in voxels; negative or past-the-end parts are padded."""
        value = self.choose_class(case, rng)
        if value == 0:
            return self._uniform_start(case.shape, rng)
        indices = case.indices_of(value)
        flat = int(indices[rng.integers(indices.size)])
        centre = np.unravel_index(flat, case.shape)
        return self._start_around(centre, case.shape)

    def sample_into(self, case: CachedCase, rng: np.random.Generator, image_out: np.ndarray,
                    label_out: np.ndarray) -> None:
        """Write one patch into ``image_out`` (C, *patch_size) and ``label_out`` (*patch_size)."""
        start = self.start(case, rng)
        crop_padded(case.image, start, self.patch_size, case.pad_value, out=image_out)
        crop_padded(case.label, start, self.patch_size, 0, out=label_out)

    def sample(self, case: CachedCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One patch: image (C, *patch_size) float32 and label (*patch_size) in the cache's
        integer dtype (uint8 or int16: 8x less to copy than int64; cast on the device)."""
        start = self.start(case, rng)
        image = crop_padded(case.image, start, self.patch_size, case.pad_value)
        label = crop_padded(case.label, start, self.patch_size, 0)
        return image, label


class PatchDataset(torch.utils.data.Dataset):
    """``samples_per_epoch`` patches per epoch from ``cases``, reproducible per (seed, epoch, rank).

    Item ``i`` returns ``(image (C, x, y, z) float32 tensor, label (x, y, z) uint8/int16 tensor)``
    from a case chosen uniformly at random. Call :meth:`set_epoch` before each epoch.
    In a ``DataLoader`` pass ``collate_fn=collate_batch``: the loader then fetches
    whole batches through :meth:`__getitems__`, written in place (one copy per voxel).
    """

    def __init__(self, cases: Sequence[CachedCase], sampler: PatchSampler, samples_per_epoch: int,
                 seed: int = 0, rank: int = 0) -> None:
        if not cases:
            raise UsageError("PatchDataset needs at least one case")
        missing = [c.case_id for c in cases if not c.has_label]
        if missing:
            raise UsageError(f"cases without a label cannot be sampled for training: {missing}")
        self.cases = list(cases)
        self.sampler = sampler
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to redraw the same stream: the seed, epoch and rank."""
        return {"seed": self.seed, "epoch": self.epoch, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def __len__(self) -> int:
        return self.samples_per_epoch

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, int(index)])

    def _case(self, index: int) -> tuple[CachedCase, np.random.Generator]:
        if not 0 <= index < self.samples_per_epoch:
            raise IndexError(index)
        rng = self.rng(index)
        return self.cases[int(rng.integers(len(self.cases)))], rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        case, rng = self._case(index)
        image, label = self.sampler.sample(case, rng)
        return torch.from_numpy(image), torch.from_numpy(label)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch, each patch written straight into the batch tensors.

        Returns image (B, C, x, y, z) float32 and label (B, x, y, z) uint8/int16, equal
        to stacking ``self[i]`` for ``i`` in ``indices`` but with one copy instead
        of two (the DataLoader calls this when present; see :func:`collate_batch`).
        """
        channels = self.cases[0].image.shape[0]
        label_dtype = np.result_type(*[c.label.dtype for c in self.cases])  # widest: no wrap
        images = torch.empty((len(indices), channels, *self.sampler.patch_size))
        labels = torch.from_numpy(np.empty((len(indices), *self.sampler.patch_size), label_dtype))
        image_np, label_np = images.numpy(), labels.numpy()
        for slot, index in enumerate(indices):
            case, rng = self._case(int(index))
            self.sampler.sample_into(case, rng, image_np[slot], label_np[slot])
        return images, labels


def collate_batch(batch: Any) -> Any:
    """``collate_fn`` for :class:`PatchDataset`: its batches come already stacked."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch
    return torch.utils.data.default_collate(batch)
