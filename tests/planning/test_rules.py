import numpy as np
import pytest

from medseg.planning import rules


def test_target_spacing_is_the_median_when_isotropic():
    spacings = np.array([[1.0, 1.0, 1.0], [1.2, 1.2, 1.5], [0.8, 0.8, 2.0]])
    shapes = np.array([[100, 100, 100]] * 3)
    assert rules.target_spacing(spacings, shapes) == (1.0, 1.0, 1.5)


def test_target_spacing_anisotropic_takes_the_10th_percentile_of_the_coarse_axis():
    spacings = np.array([[0.7, 0.7, 5.0], [0.7, 0.7, 5.0], [0.7, 0.7, 4.0]])
    shapes = np.array([[64, 64, 8]] * 3)
    # sorted z spacings 4, 5, 5: the 10th percentile is 4 + 0.2 * (5 - 4) = 4.2
    assert rules.target_spacing(spacings, shapes) == (0.7, 0.7, 4.2)
    # as many voxels along z as along x, y: not anisotropic in nnU-Net's sense
    assert rules.target_spacing(spacings, np.array([[64, 64, 64]] * 3)) == (0.7, 0.7, 5.0)


def test_target_spacing_never_finer_than_the_other_axes():
    spacings = np.array([[1.0, 1.0, 0.5]] * 2 + [[1.0, 1.0, 8.0]] * 8)
    shapes = np.array([[200, 200, 20]] * 10)
    # median z 8 > 3 * 1; the 10th percentile (0.5) is clamped to the in-plane 1.0
    assert rules.target_spacing(spacings, shapes) == (1.0, 1.0, 1.0)


def test_pooling_by_hand():
    # isotropic 24 x 24 x 16: all axes pool to 12 x 12 x 8, then to 6 x 6 x 4, then stop
    assert rules.pooling((2.0, 2.0, 2.0), (24, 24, 16)) == [(2, 2, 2), (2, 2, 2)]
    # 0.7 x 0.7 x 4.2 mm: x, y pool 64 -> 32 -> 16 (1.4, then 2.8 mm); z waits until
    # 4.2 / 2.8 < 2, then pools with them once (10 -> 5 < 8); x, y go on 8 -> 4
    assert rules.pooling((0.7, 0.7, 4.2), (64, 64, 10)) == [(2, 2, 1), (2, 2, 1), (2, 2, 2),
                                                              (2, 2, 1)]
    # after 8 x 8 x 22 -> 4 x 4 x 11, z is the one axis left: it needs 12 voxels, 11 stops
    assert rules.pooling((1.0, 1.0, 1.0), (8, 8, 22)) == [(2, 2, 2)]
    assert rules.pooling((1.0, 1.0, 1.0), (8, 8, 24)) == [(2, 2, 2), (1, 1, 2)]


def test_fit_patch_shrinks_the_largest_axis_by_its_pooling_multiple():
    def fits(patch, pools):
        return np.prod(patch) <= 40 * 40 * 24

    patch, pools = rules.fit_patch((64, 48, 24), (1.0, 1.0, 1.0), fits, (8, 8, 8))
    # 64 x 48 x 24 (divisor 8, 8, 8): x 64 -> 56 -> 48, then the tie x = y = 48 shrinks x
    # first, y next: 40 x 40 x 24 = 38400 voxels fits
    assert patch == (40, 40, 24)
    assert pools == rules.pooling((1.0, 1.0, 1.0), patch)
    assert all(p % d == 0 for p, d in zip(patch, rules.divisor(pools)))
    assert rules.fit_patch((64, 48, 24), (1.0, 1.0, 1.0), lambda p, q: False, (8, 8, 8)) is None


def test_batch_size_rule():
    assert rules.batch_size(8e9, 5e9, (64, 64, 64), 1e12) == 2  # 1 fits, the floor is 2
    assert rules.batch_size(80e9, 5e9, (64, 64, 64), 1e12) == 16
    assert rules.batch_size(80e9, 5e9, (64, 64, 64), 64**3 * 100) == 5  # 5 % of 100 patches


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 5.0)])
def test_pooling_keeps_feature_maps_at_least_4(spacing):
    patch = (160, 128, 40)
    pools = rules.pooling(spacing, patch)
    final = [p / d for p, d in zip(patch, rules.divisor(pools))]
    assert min(final) >= rules.MIN_FEATURE_MAP
