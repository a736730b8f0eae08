"""Tiled Fortran-order copy: same values as NumPy's, for ragged tile edges too."""

import numpy as np
import pytest

from medseg.io.layout import TILE, as_fortran


@pytest.mark.parametrize("shape", [(TILE[0] + 3, TILE[1] * 2 + 1, TILE[2] + 5), (5, 4, 3, 2)])
def test_as_fortran_matches_numpy(shape):
    array = np.random.default_rng(1).integers(-1000, 1000, size=shape).astype(np.int16)
    out = as_fortran(array)
    assert out.flags.f_contiguous and out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)
    assert out.tobytes(order="A") == np.asfortranarray(array).tobytes(order="A")
    assert as_fortran(out) is out
