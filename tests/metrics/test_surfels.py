"""The derived marching-cubes surfel areas equal surface-distance's table at any spacing."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.metrics.surfels import surfel_area_table


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 5.0), (2.3, 0.4, 1.1)])
def test_table_equals_surface_distance(spacing):
    lt = pytest.importorskip("surface_distance.lookup_tables")
    expected = lt.create_table_neighbour_code_to_surface_area(spacing)
    np.testing.assert_allclose(surfel_area_table(spacing), expected, rtol=1e-12, atol=0)


def test_hand_values():
    table = surfel_area_table((1.0, 2.0, 3.0))
    assert table[0] == table[255] == 0.0
    # one corner: triangle through three edge midpoints, area |(yz, xz, xy)/8|
    assert table[1] == pytest.approx(np.linalg.norm([6, 3, 2]) / 8)
    # four corners on one face (x = const): a y-by-z rectangle
    assert table[0b00001111] == pytest.approx(2.0 * 3.0)
