import numpy as np
import pytest

from medseg.errors import GeometryError, UsageError
from medseg.transforms import clip_percentiles, ct_window, foreground_bbox, uncrop, zscore


def test_ct_window_by_hand():
    hu = np.array([-1000, -200, -100, 50, 300, 3000], dtype=np.int16)
    np.testing.assert_allclose(ct_window(hu, [-200, 300]), [0, 0, 0.2, 0.5, 1, 1])
    np.testing.assert_allclose(ct_window(hu, [-200, 300], (-1, 1)), [-1, -1, -0.6, 0, 1, 1])
    assert ct_window(hu, [-200, 300]).dtype == np.float32
    with pytest.raises(UsageError, match="window"):
        ct_window(hu, [300, -200])
    with pytest.raises(UsageError, match="output_range"):
        ct_window(hu, [-200, 300], (0, 255))


def test_zscore_inside_mask():
    rng = np.random.default_rng(0)
    image = rng.normal(300, 50, size=(2, 20, 20, 10)).astype(np.float32)
    image[:, :5] = 0.0
    mask = np.zeros((20, 20, 10), bool)
    mask[5:] = True
    out = zscore(image, mask)
    for c in range(2):
        np.testing.assert_allclose(out[c][mask].mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(out[c][mask].std(), 1.0, atol=1e-5)
        expected = (0.0 - image[c][mask].mean()) / image[c][mask].std()
        np.testing.assert_allclose(out[c][~mask], expected, rtol=1e-5)


def test_clip_percentiles_matches_numpy():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(8, 8, 8)).astype(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    out = clip_percentiles(image, [0.5, 99.5])
    np.testing.assert_allclose(out, np.clip(image, lo, hi))
    with pytest.raises(UsageError, match="clip_percentiles"):
        clip_percentiles(image, [99, 1])


def test_crop_uncrop_identity():
    image = np.full((3, 20, 16, 12), -1000.0, np.float32)
    image[1, 4:9, 3:7, 2:11] = 40.0
    start, stop = foreground_bbox(image, -500, margin=2)
    assert start == (2, 1, 0) and stop == (11, 9, 12)
    cropped = image[(Ellipsis,) + tuple(slice(a, b) for a, b in zip(start, stop))]
    back = uncrop(cropped, (20, 16, 12), start, fill=-1000.0)
    np.testing.assert_array_equal(back, image)
    probs = uncrop(np.full((3, 2, 2, 2), 0.25, np.float32), (4, 4, 4), (1, 1, 1), [1, 0, 0])
    assert probs[:, 0, 0, 0].tolist() == [1, 0, 0] and probs[1, 1, 1, 1] == 0.25
    with pytest.raises(GeometryError, match="crop box"):
        uncrop(cropped, (5, 5, 5), start)
    assert foreground_bbox(image, 1e6) == ((0, 0, 0), (20, 16, 12))
