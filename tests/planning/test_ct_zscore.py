"""intensity mode 'ct' with mean_std: clip to the window, then z-score with fixed values."""

import numpy as np
import pytest

from medseg.errors import ConfigError, UsageError
from medseg.transforms import Preprocessing
from medseg.transforms.intensity import ct_window_zscore
from medseg.volume import Volume


def test_ct_window_zscore_by_hand():
    hu = np.array([-1000, -100, 0, 100, 300, 2000], dtype=np.int16)
    # clip to [-100, 300], then (x - 100) / 50
    np.testing.assert_allclose(ct_window_zscore(hu, [-100, 300], [100, 50]),
                               [-4, -4, -2, 0, 4, 4])
    with pytest.raises(UsageError, match="mean_std"):
        ct_window_zscore(hu, [-100, 300], [100, 0])


def test_preprocessing_mean_std():
    array = np.array([[[[-500.0, 0.0], [50.0, 400.0]]]], dtype=np.float32)
    pre = Preprocessing.from_config({"intensity": {"mode": "ct", "window": [-100, 200],
                                                   "mean_std": [50, 25]}})
    out = pre.apply(Volume(array, np.eye(4))).image.array
    np.testing.assert_allclose(out.ravel(), [-6, -2, 0, 6])


@pytest.mark.parametrize("spec, match", [
    ({"mode": "mr", "mean_std": [0, 1]}, "needs mode 'ct'"),
    ({"mode": "ct", "window": [0, 1], "output_range": [0, 1], "mean_std": [0, 1]},
     "no 'output_range'"),
    ({"mode": "ct", "window": [0, 1], "mean_std": [0, -1]}, "std > 0"),
])
def test_bad_mean_std(spec, match):
    with pytest.raises(ConfigError, match=match):
        Preprocessing.from_config({"intensity": spec})
