"""Sliding-window inference over a (B, C, x, y, z) volume with any predictor callable.

Two outputs from one driver:

* :func:`sliding_window` returns the blended predictor output
  (B, K, x, y, z) (logits or probabilities, whatever the predictor returns);
* :func:`sliding_window_argmax` returns the (B, x, y, z) argmax (uint8, or uint16 above
  256 classes: :func:`medseg.argmax.label_dtype`) and never
  allocates the full (K, x, y, z) accumulator: windows run in z order and only
  a z-slab (window depth + one z step) is accumulated; slices no later window
  touches are finalised (argmax) and dropped as soon as possible.

Both run the same windows in the same batches and add into their accumulator
in the same order, so the argmax of :func:`sliding_window` equals
:func:`sliding_window_argmax` exactly.

Blending: see :mod:`medseg.inference.windows` (Gaussian, sigma = roi / 8,
floored at 1e-3 as in MONAI, or constant weights); the output is
``sum(weight * pred) / sum(weight)`` over the windows covering a voxel.
With a ``skip_empty`` mask (say the body), the windows are laid over the mask's
bounding box only (grown to at least one roi), not over the whole volume, as
nnU-Net and TotalSegmentator crop to the body before inference; outside the box
the output is one-hot background (1 in channel 0, 0 elsewhere; label 0). Inside
it, windows with no mask voxel are not run either and count as if the predictor
had returned one-hot background there, blended with the same weights. A voxel
covered only by skipped windows is therefore exactly ``[1, 0, ..., 0]``.

``blend="nnunet"`` follows nnU-Net v2's predictor operation for operation, so that an
imported nnU-Net model gives nnUNetPredictor's logits: windows spread evenly, its Gaussian,
the flips of one window averaged in float32 in nnU-Net's order (its axis 0 is the window
frame's z), ``weight * pred`` in float32 added into a float16 accumulator, the weights
summed in float16, and the division in float16 (``out_dtype`` is then float16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from medseg.argmax import argmax_channels, torch_label_dtype
from medseg.card import WindowSettings
from medseg.errors import GeometryError, UsageError
from medseg.inference.windows import Arithmetic, WindowGrid, arithmetic_for

__all__ = ["sliding_window", "sliding_window_argmax"]

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
Window = tuple[int, int, int]
Box = tuple[slice, slice, slice]
_OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def sliding_window(
    predictor: Predictor,
    image: torch.Tensor,
    window: WindowSettings | int | Sequence[int],
    *,
    device: str | torch.device | None = None,
    out_device: str | torch.device | None = None,
    skip_empty: torch.Tensor | None = None,
    progress: bool = False,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Blend ``predictor`` over overlapping windows of ``image``.

    Parameters
    ----------
    predictor : callable (n, C, rx, ry, rz) -> (n, K, rx, ry, rz), e.g. a network in eval mode.
    image : tensor (B, C, x, y, z). A volume smaller than ``roi_size`` along an
        axis is zero-padded (symmetrically) and the result cropped back.
    window : :class:`~medseg.card.WindowSettings` (``roi_size`` in voxels, ``overlap``,
        ``blend``, ``batch_size`` windows per predictor call, ``mirror_axes`` for
        mirroring test-time augmentation: the outputs of all 2^n flip combinations are
        averaged), or a bare ``roi_size`` (one int for a cube, or (x, y, z)) with the
        default settings.
    device : where windows are run (default: ``image.device``).
    out_device : where the output is accumulated (default: ``device``); use
        ``"cpu"`` for volumes whose output does not fit the accelerator.
    skip_empty : optional bool mask (x, y, z) or (B, x, y, z), e.g. the body: windows
        cover only its bounding box (the rest is background), and windows with no
        True voxel are not run and count as one-hot background (module docstring).
    progress : show a tqdm progress bar over batches.
    out_dtype : accumulator and output dtype (float32 or float16/bfloat16 to halve memory).

    Returns
    -------
    tensor (B, K, x, y, z) of ``out_dtype`` on ``out_device``.
    """
    run = _Run.prepare(predictor, image, WindowSettings.of(window), device=device,
                       out_device=out_device, skip_empty=skip_empty, progress=progress,
                       out_dtype=out_dtype)
    return run.into(_FullSink(run.batch))


def sliding_window_argmax(
    predictor: Predictor,
    image: torch.Tensor,
    window: WindowSettings | int | Sequence[int],
    **options: Any,
) -> torch.Tensor:
    """Like :func:`sliding_window` but returns the argmax label map, accumulating in z-slabs.

    ``options`` are :func:`sliding_window`'s keyword options (``device``,
    ``out_device``, ``skip_empty``, ``progress``, ``out_dtype``), with the same meaning.
    Peak accumulator memory is K * x * y * (rz + z step) values instead of
    K * x * y * z (see :func:`medseg.inference.estimate_peak_memory`).

    Returns
    -------
    tensor (B, x, y, z) on ``out_device``, of :func:`medseg.argmax.torch_label_dtype`:
    uint8 up to K = 256 classes, uint16 above (torch has no uint16 ``masked_fill_`` on the
    CPU, so each slab's argmax is computed in int32 and copied in).
    """
    run = _Run.prepare(predictor, image, WindowSettings.of(window), **options)
    return run.into(_SlabSink(run.batch, run.grid.z_span))


# -- the driver ---------------------------------------------------------------------------


@dataclass
class _Chunk:
    """Consecutive windows (z-ordered) handled together: one predictor batch at most."""

    z_lo: int
    run: list[Window] = field(default_factory=list)
    skipped: list[Window] = field(default_factory=list)


@dataclass
class _Run:
    predictor: Predictor
    image: torch.Tensor  # (B, C, X, Y, Z) padded, on the window device, cropped to the box
    grid: WindowGrid  # over the box
    box: Box  # the region the windows cover, in the padded volume (the mask's box, or all)
    shape: tuple[int, int, int]  # the padded volume's spatial shape (x, y, z)
    pad: list[tuple[int, int]]  # per spatial axis (before, after)
    batch_size: int
    out_device: torch.device
    out_dtype: torch.dtype  # the accumulator's (the arithmetic's choice)
    arithmetic: Arithmetic  # placement, weights, flips, adding (chosen once from the blend)
    weight: torch.Tensor  # (rx, ry, rz) importance map on out_device, accumulator dtype
    mask: torch.Tensor | None  # (B, X, Y, Z) bool, padded, cropped to the box
    progress: bool

    @property
    def batch(self) -> int:
        return self.image.shape[0]

    @classmethod
    def prepare(cls, predictor, image, window: WindowSettings, *, device=None, out_device=None,
                skip_empty=None, progress=False, out_dtype=torch.float32) -> _Run:
        if not callable(predictor):
            raise UsageError(f"predictor must be callable, got {type(predictor).__name__}")
        if not isinstance(image, torch.Tensor) or image.ndim != 5:
            got = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
            raise UsageError(f"image must be a torch tensor (B, C, x, y, z), got {got}")
        if out_dtype not in _OUT_DTYPES:
            raise UsageError(f"out_dtype must be a floating dtype, got {out_dtype}")
        roi = window.roi_size
        device = image.device if device is None else torch.device(device)
        out_device = device if out_device is None else torch.device(out_device)
        image = image.to(device)
        pad = [((r - n) // 2, r - n - (r - n) // 2) if n < r else (0, 0)
               for n, r in zip(image.shape[2:], roi)]
        mask = _check_mask(skip_empty, image)
        if any(p != (0, 0) for p in pad):
            flat = [v for p in reversed(pad) for v in p]
            image = F.pad(image, flat)
            mask = None if mask is None else F.pad(mask.to(torch.uint8), flat).to(torch.bool)
        shape = tuple(int(n) for n in image.shape[2:])
        box = _mask_box(mask, roi, shape)
        image = image[(slice(None), slice(None)) + box]
        mask = None if mask is None else mask[(slice(None),) + box]
        arithmetic = arithmetic_for(window.blend, window.mirror_axes)
        grid = WindowGrid.build(image.shape[2:], roi, window.overlap, arithmetic.placement)
        out_dtype = arithmetic.dtypes(out_dtype)[0]
        weight = arithmetic.weight(roi, out_device, out_dtype)
        log.debug("sliding window: %d windows of %s over %s, %d flips", len(grid.windows),
                  roi, tuple(image.shape[2:]), len(arithmetic.flips))
        return cls(predictor, image, grid, box, shape, pad, window.batch_size, out_device,
                   out_dtype, arithmetic, weight, mask, progress)

    def into(self, sink) -> torch.Tensor:
        """Drive every image of the batch into ``sink``; its output, cropped of the padding."""
        for b in range(self.batch):
            sink.b = b
            self.drive(b, sink)
        return self.crop(sink.out)

    def crop(self, out: torch.Tensor) -> torch.Tensor:
        if all(p == (0, 0) for p in self.pad):
            return out
        index = (Ellipsis,) + tuple(slice(a, out.shape[-3 + i] - b)
                                    for i, (a, b) in enumerate(self.pad))
        return out[index].contiguous()

    def schedule(self, b: int) -> list[_Chunk]:
        """Group the z-ordered windows of image ``b`` into chunks (see module docstring)."""
        span, rz = self.grid.z_span, self.grid.roi[2]
        chunks: list[_Chunk] = []
        for w in self.grid.windows:
            empty = self.mask is not None and not bool(self.mask[b][self.grid.region(w)].any())
            if (not chunks or w[2] + rz > chunks[-1].z_lo + span
                    or (not empty and len(chunks[-1].run) == self.batch_size)):
                chunks.append(_Chunk(w[2]))
            (chunks[-1].skipped if empty else chunks[-1].run).append(w)
        return chunks

    def drive(self, b: int, sink) -> None:
        chunks = self.schedule(b)
        first = next((i for i, c in enumerate(chunks) if c.run), None)
        with torch.inference_mode():
            if first is None:  # everything skipped: learn K from one throw-away window
                ready = self.predict([self.grid.windows[0]], b)
            else:
                ready = self.predict(chunks[first].run, b)
            sink.allocate(ready.shape[1], self.shape, self.box, self.out_device,
                          self.arithmetic.dtypes(self.out_dtype))
            add, weight = self.arithmetic.add, self.weight
            n_run = sum(len(c.run) for c in chunks)
            log.debug("image %d: running %d of %d windows", b, n_run, len(self.grid.windows))
            bar = _progress(self.progress, len(chunks))
            for i, chunk in enumerate(chunks):
                preds = ready if i == first else self.predict(chunk.run, b) if chunk.run else None
                sink.advance(chunk.z_lo)
                for w in chunk.skipped:
                    sink.add(self.grid.region(w), None, weight, add)
                for j, w in enumerate(chunk.run):
                    sink.add(self.grid.region(w), preds[j], weight, add)
                if bar is not None:
                    bar.update(1)
            sink.advance(self.grid.shape[2])
            sink.finish()
            if bar is not None:
                bar.close()

    def predict(self, windows: list[Window], b: int) -> torch.Tensor:
        """Predictor output (n, K, *roi) for ``windows`` of image ``b``, summed over flips."""
        batch = torch.stack([self.image[b][(slice(None),) + self.grid.region(w)]
                             for w in windows])
        total = None
        for flip in self.arithmetic.flips:
            dims = [2 + a for a in flip]
            x = batch.flip(dims) if dims else batch
            y = self.predictor(x)
            self.check_output(y, len(windows))
            y = y.flip(dims) if dims else y
            total = y if total is None else total + y
        return self.arithmetic.combine_flips(total, self.out_device,  # type: ignore[arg-type]
                                             self.out_dtype)

    def check_output(self, y, n: int) -> None:
        if (not isinstance(y, torch.Tensor) or y.ndim != 5 or y.shape[0] != n
                or tuple(y.shape[2:]) != self.grid.roi):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise GeometryError(
                f"predictor output must be a tensor (n, K, *roi) = ({n}, K, "
                f"{', '.join(map(str, self.grid.roi))}), got {got}"
            )


# -- accumulators -------------------------------------------------------------------------


class _FullSink:
    """Accumulates sum(weight * pred) into ``out[b]`` of a (B, K, X, Y, Z) tensor, then divides."""

    def __init__(self, batch: int) -> None:
        self.batch, self.b = batch, 0
        self.out: torch.Tensor | None = None

    def allocate(self, k, shape, box: Box, device, dtypes) -> None:
        if self.out is None:
            self.out = torch.zeros((self.batch, k) + tuple(shape), dtype=dtypes[0], device=device)
        elif self.out.shape[1] != k:
            raise GeometryError(f"predictor returned {k} channels for image {self.b}, "
                                f"but {self.out.shape[1]} for image 0")
        self.box = box
        self.acc = self.out[self.b][(slice(None),) + box]
        self.den = torch.zeros(self.acc.shape[1:], dtype=dtypes[1], device=device)

    def add(self, region, pred: torch.Tensor | None, weight: torch.Tensor, add) -> None:
        add(self.acc, self.den, region, pred, weight)

    def advance(self, z: int) -> None:
        pass

    def finish(self) -> None:
        self.acc.div_(self.den)
        del self.den
        _fill_outside(self.out[self.b][0], self.box, 1.0)  # one-hot background


class _SlabSink:
    """Accumulates the z-slab [base, base + span) and argmaxes slices below ``advance(z)``.

    Labels go to ``out[b]`` of a (B, X, Y, Z) tensor of :func:`torch_label_dtype`. The
    arithmetic per voxel is the same as :class:`_FullSink` (same adds in the same order,
    same division), so the labels equal the argmax of its output exactly.
    """

    def __init__(self, batch: int, span: int) -> None:
        self.batch, self.b, self.span = batch, 0, span
        self.out: torch.Tensor | None = None

    def allocate(self, k, shape, box: Box, device, dtypes) -> None:
        if self.out is None:  # zeros: label 0 (background) outside the box
            self.out = torch.zeros((self.batch,) + tuple(shape), dtype=torch_label_dtype(k),
                                   device=device)
        self.labels = self.out[self.b][box]
        plane = tuple(self.labels.shape[:2])
        self.buf = torch.zeros((k,) + plane + (self.span,), dtype=dtypes[0], device=device)
        self.den = torch.zeros(plane + (self.span,), dtype=dtypes[1], device=device)
        self.base = 0

    def add(self, region, pred: torch.Tensor | None, weight: torch.Tensor, add) -> None:
        sx, sy, sz = region
        add(self.buf, self.den, (sx, sy, slice(sz.start - self.base, sz.stop - self.base)),
            pred, weight)

    def advance(self, z: int) -> None:
        """Finalise slices [base, z): no window still to come touches them."""
        d = min(z, self.labels.shape[2]) - self.base
        if d <= 0:
            return
        argmax_channels(self.buf[..., :d], self.labels[:, :, self.base:self.base + d],
                        self.den[..., :d])
        keep = self.span - d
        for k in range(0, keep, d):  # shift the rest down, d slices at a time (no overlap)
            n = min(d, keep - k)
            self.buf[..., k:k + n].copy_(self.buf[..., k + d:k + d + n])
            self.den[..., k:k + n].copy_(self.den[..., k + d:k + d + n])
        self.buf[..., max(keep, 0):].zero_()
        self.den[..., max(keep, 0):].zero_()
        self.base += d

    def finish(self) -> None:
        del self.buf, self.den


# -- helpers ------------------------------------------------------------------------------


def _mask_box(mask: torch.Tensor | None, roi: Window, shape: tuple[int, int, int]) -> Box:
    """Bounding box (x, y, z slices, voxels) of the mask's True voxels over all images,
    grown symmetrically to at least ``roi`` within ``shape``; all of ``shape`` when the
    mask is None or empty (``shape`` is at least ``roi`` on every axis: padded)."""
    full = tuple(slice(0, n) for n in shape)
    if mask is None:
        return full  # type: ignore[return-value]
    union = mask.any(dim=0)
    if not bool(union.any()):
        return full  # type: ignore[return-value]
    box = []
    for axis, (n, r) in enumerate(zip(shape, roi)):
        hit = torch.nonzero(union.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        lo, hi = int(hit[0]), int(hit[-1]) + 1
        if hi - lo < r:
            lo = max(0, min(lo - (r - (hi - lo)) // 2, n - r))
            hi = lo + r
        box.append(slice(lo, hi))
    return tuple(box)  # type: ignore[return-value]


def _fill_outside(t: torch.Tensor, box: Box, value: float) -> None:
    """Set every voxel of ``t`` (x, y, z) outside ``box`` to ``value``, in place."""
    for axis, s in enumerate(box):
        lead = (slice(None),) * axis
        t[lead + (slice(0, s.start),)] = value
        t[lead + (slice(s.stop, None),)] = value


def _check_mask(mask, image: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise UsageError(f"skip_empty must be a bool tensor (x, y, z), got {type(mask).__name__}")
    spatial = tuple(image.shape[2:])
    if mask.ndim == 3:
        mask = mask.expand((image.shape[0],) + spatial) if tuple(mask.shape) == spatial else mask
    if tuple(mask.shape) != (image.shape[0],) + spatial:
        raise UsageError(f"skip_empty mask must have shape (x, y, z) = {spatial} or "
                         f"(B, x, y, z), got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sliding window", unit="batch", leave=False)
