"""The synthetic phantom: deterministic, geometry-consistent, CT-like."""

import hashlib

import numpy as np
import pytest

from medseg.data.phantom import LABEL_NAMES, make_phantom
from medseg.errors import UsageError


def _digest(case):
    return hashlib.sha256(case.image.array.tobytes() + case.label.array.tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs():
    a = make_phantom((40, 36, 24), seed=3)
    b = make_phantom((40, 36, 24), seed=3)
    c = make_phantom((40, 36, 24), seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_slab_size_does_not_change_bytes():
    assert _digest(make_phantom((32, 32, 20), slab=7, noise_hu=0)) == _digest(
        make_phantom((32, 32, 20), slab=32, noise_hu=0)
    )


def test_every_label_present_with_distinct_hu():
    case = make_phantom((64, 64, 48), spacing_mm=(4.0, 4.0, 5.0), noise_hu=0, seed=1)
    image, label = case.image.array, case.label.array
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, *LABEL_NAMES}
    medians = {k: float(np.median(image[label == k])) for k in LABEL_NAMES}
    # Tissues are told apart by intensity (the two kidneys share one, as in a real
    # CT, and differ by side): medians at least 30 HU apart.
    assert medians[3] == medians[4]
    values = sorted(v for k, v in medians.items() if k != 4)
    assert min(np.diff(values)) >= 30
    assert image.min() == -1000  # air outside the body


def test_orientation_changes_grid_not_anatomy():
    ras = make_phantom((40, 40, 30), orientation="RAS", noise_hu=0)
    lps = make_phantom((40, 40, 30), orientation="LPS", noise_hu=0)
    assert lps.image.orientation == "LPS"
    # LPS flips the x and y array axes of the same anatomy on the same (centred) grid.
    np.testing.assert_array_equal(lps.label.array, ras.label.array[::-1, ::-1, :])
    np.testing.assert_allclose(lps.image.world_coords([0, 0, 0]), ras.image.world_coords([39, 39, 0]))


def test_oblique_affine_and_partial_volume():
    case = make_phantom((40, 40, 30), oblique_deg=25, noise_hu=0)
    assert case.image.spacing_mm == pytest.approx((3.0, 3.0, 4.0))
    liver_hu = 95
    # Partial volume: border voxels hold values between the body and the liver HU.
    values = case.image.array
    assert np.any((values > 25) & (values < liver_hu - 5))


def test_rejects_tiny_shape():
    with pytest.raises(UsageError, match="shape"):
        make_phantom((4, 40, 40))
