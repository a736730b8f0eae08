"""The runner's NumPy steps against medseg's torch engines they mirror, on the same input:
grid resampling (:mod:`medseg.transforms.resample`), its slab-wise form, and the sliding
window with MONAI's and nnU-Net's arithmetic (:mod:`medseg.inference.sliding_window`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.card import WindowSettings
from medseg.export.runtime.resample import iter_resampled_slabs, resample_to_grid
from medseg.export.runtime.window import sliding_window
from medseg.inference.sliding_window import sliding_window as torch_sliding_window
from medseg.transforms.grid import grid_for_spacing
from medseg.transforms.resample import resample_to_grid as torch_resample_to_grid
from medseg.volume import LabelMap, Volume

AFFINE = np.array([[-1.5, 0.1, 0, 10], [0, 2.0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def _image(shape=(2, 23, 19, 11), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("mode", ["linear", "cubic", "nearest"])
@pytest.mark.parametrize("spacing", [(2.2, 1.3, 4.0), (0.9, 3.1, 2.0)])
def test_resample_equals_torch_engine(mode, spacing):
    array = _image()
    if mode == "nearest":
        array = (array > 0).astype(np.uint8)[0]
    volume = (LabelMap if mode == "nearest" else Volume)(array, AFFINE)
    shape, affine = grid_for_spacing(volume.spatial_shape, AFFINE, spacing)
    ours = resample_to_grid(array, AFFINE, shape, affine, mode)
    theirs = torch_resample_to_grid(volume, shape, affine, mode).array
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    if mode != "nearest":  # not the identity: values did move
        assert np.abs(ours.mean() - array.mean()) < 0.5 and ours.shape != array.shape


def test_slabs_equal_the_whole_resampling():
    array = _image((3, 17, 15, 13))
    shape, affine = grid_for_spacing(array.shape[1:], AFFINE, (1.1, 1.7, 1.3))
    whole = resample_to_grid(array, AFFINE, shape, affine, "linear")
    pieces = np.empty_like(whole)
    count = 0
    for zs, block in iter_resampled_slabs(array, AFFINE, shape, affine, "linear",
                                          slab_voxels=shape[0] * shape[1] * 4):
        pieces[..., zs] = block
        count += 1
    assert count > 2
    np.testing.assert_array_equal(pieces, whole)


def _conv_predictor(seed=1, k=3):
    conv = torch.nn.Conv3d(2, k, 3, padding=1)
    torch.manual_seed(seed)
    torch.nn.init.normal_(conv.weight)
    conv.eval()

    def run_torch(batch):
        with torch.no_grad():
            return conv(batch)

    def run_numpy(batch):
        return run_torch(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    return run_torch, run_numpy


@pytest.mark.parametrize("blend,mirror,batch", [("gaussian", (), 2), ("gaussian", (0, 2), 3),
                                               ("constant", (1,), 1), ("nnunet", (0, 1, 2), 1),
                                               ("nnunet", (), 1)])
def test_sliding_window_equals_torch_driver(blend, mirror, batch):
    image = _image((2, 30, 21, 9))  # z smaller than the window: padded
    window = WindowSettings((12, 10, 12), 0.5, blend, batch, mirror)
    run_torch, run_numpy = _conv_predictor()
    theirs = torch_sliding_window(run_torch, torch.from_numpy(image)[None], window)[0].numpy()
    ours = sliding_window(run_numpy, image, window)
    assert ours.dtype == theirs.dtype == (np.float16 if blend == "nnunet" else np.float32)
    assert ours.shape == theirs.shape == (3, 30, 21, 9)
    tol = 1e-2 if blend == "nnunet" else 1e-5  # float16: one step of values near 4
    np.testing.assert_allclose(ours.astype(np.float32), theirs.astype(np.float32),
                               atol=tol, rtol=0)
    if blend == "nnunet":  # float16 sums: the same bits almost everywhere
        assert np.mean(ours == theirs) > 0.99
