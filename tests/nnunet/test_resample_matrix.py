"""nnU-Net's per-axis resampling matrices and the rounding-tie test, by hand (no nnunetv2:
``test_preprocess.py`` compares the whole resampling with nnunetv2 itself)."""

from __future__ import annotations

import numpy as np

from medseg.transforms.resample_nnunet import _near_ties, axis_matrix


def test_linear_halving_averages_neighbour_pairs():
    # 4 -> 2 voxels, centres aligned: sources at (i + 0.5) * 2 - 0.5 = 0.5 and 2.5
    assert axis_matrix(4, 2, 1, False).tolist() == [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]


def test_nearest_along_a_separate_axis_and_identity():
    # 3 -> 6: sources -0.25, 0.25, 0.75, 1.25, 1.75, 2.25, each rounded to the nearest slice
    matrix = axis_matrix(3, 6, 0, True)
    assert np.argmax(matrix, axis=1).tolist() == [0, 0, 1, 1, 2, 2]
    assert matrix.sum(axis=1).tolist() == [1.0] * 6
    assert axis_matrix(5, 5, 3, False) is None  # nnU-Net keeps an unchanged axis


def test_cubic_rows_reproduce_constants_and_linear_ramps():
    """A cubic spline reproduces polynomials of degree <= 1 exactly: each row sums to 1 and
    maps the ramp 0..n-1 to its source position away from the edges (the edge padding's
    effect decays as 0.268 ** distance, the spline's pole)."""
    matrix = axis_matrix(40, 17, 3, False)
    np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-12)
    positions = (np.arange(17) + 0.5) * 40 / 17 - 0.5
    inside = (positions > 12) & (positions < 27)
    assert inside.sum() == 7
    np.testing.assert_allclose((matrix @ np.arange(40.0))[inside], positions[inside], atol=1e-6)


def test_near_ties_of_float16():
    tie = 1 + 2.0**-11  # halfway between the float16 neighbours 1 and 1 + 2**-10
    values = np.array([tie, -tie, 1.0, tie + 2.0**-30, tie * (1 + 2.0**-45), 3 * 2.0**-12])
    assert _near_ties(values, np.dtype(np.float16)).tolist() == [True, True, False, False,
                                                                  True, False]
    assert _near_ties(values, np.dtype(np.float64)) is None
