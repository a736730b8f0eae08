"""The fast paths of evaluate_arrays give exactly the values of the plain computation."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics import get_convention, surface_distances
from medseg.metrics.evaluate import _nonzero_region, evaluate_arrays

from .shapes import PAIRS, blob


def _box_by_argwhere(*arrays: np.ndarray) -> tuple[slice, ...]:
    points = np.concatenate([np.argwhere(a) for a in arrays])
    if not points.size:
        return (slice(0, 0),) * 3
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(points.min(0), points.max(0)))


@pytest.mark.parametrize("dtype, shape", [
    (np.uint8, (13, 11, 24)),   # 24 bytes per column: read as 8-byte words
    (np.uint8, (13, 11, 7)),    # odd column: 1-byte words
    (np.uint16, (13, 11, 6)),   # 12 bytes: 4-byte words
    (np.int32, (13, 11, 5)),
    (bool, (13, 11, 9)),
])
def test_nonzero_region_equals_argwhere_box(dtype, shape):
    rng = np.random.default_rng(3)
    a = np.zeros(shape, dtype)
    b = np.zeros(shape, dtype)
    a[2:5, 7, 3] = 1
    b[9, 1:3, 1] = 3 if dtype is not bool else True
    b[rng.integers(0, shape[0]), rng.integers(0, shape[1]), shape[2] - 1] = 1
    assert _nonzero_region(a, b) == _box_by_argwhere(a, b)
    assert _nonzero_region(a) == _box_by_argwhere(a)
    assert _nonzero_region(np.zeros(shape, dtype)) == (slice(0, 0),) * 3
    sliced = b[::2, :, ::-1]  # not contiguous: the plain path
    assert _nonzero_region(sliced) == _box_by_argwhere(sliced)


@pytest.mark.parametrize("convention", ["medseg", "monai", "deepmind", "medpy"])
@pytest.mark.parametrize("pair", ["blobs", "ellipsoids", "thin"])
def test_two_thread_surface_distances_are_identical(convention, pair):
    pred, gt = (np.pad(m, 1) for m in PAIRS[pair]())
    conv = get_convention(convention)
    one = surface_distances(pred, gt, (0.8, 0.9, 2.5), conv)
    two = surface_distances(pred, gt, (0.8, 0.9, 2.5), conv, workers=2)
    for field in ("pred_to_gt", "gt_to_pred", "pred_weights", "gt_weights"):
        a, b = getattr(one, field), getattr(two, field)
        assert (a is None and b is None) or np.array_equal(a, b)


@pytest.mark.parametrize("n_labels", [1, 3])
def test_evaluate_arrays_does_not_depend_on_workers(n_labels):
    gt = blob(4).astype(np.uint8)
    if n_labels == 3:
        gt = gt + 2 * blob(5).astype(np.uint8)  # labels 1, 2 and 3
    pred = np.roll(gt, 2, axis=0)
    one = evaluate_arrays(pred, gt, (0.7, 0.7, 3.0), workers=1)
    assert len(one) == n_labels
    for workers in (2, 3):  # one label: the spare thread searches the second direction
        assert evaluate_arrays(pred, gt, (0.7, 0.7, 3.0), workers=workers) == one
