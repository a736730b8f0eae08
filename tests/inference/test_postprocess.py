"""keep_largest_component against hand cases and MONAI's KeepLargestConnectedComponent."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import UsageError
from medseg.inference.postprocess import keep_largest_component


def test_hand_case_keeps_biggest_island_per_label():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[5:8, 5:8, 5:8] = 1  # 27 voxels: kept
    labels[0:3, 7:9, 0:1] = 2  # 6 voxels: kept
    labels[9, 9, 9] = 2  # 1 voxel
    out = keep_largest_component(labels)
    expected = labels.copy()
    expected[0:2, 0:2, 0:2] = 0
    expected[9, 9, 9] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == labels.dtype and labels[9, 9, 9] == 2  # input untouched


def test_connectivity_and_only():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 3  # corner neighbours: one component only at 26
    labels[1, 1, 2] = 3
    assert keep_largest_component(labels, connectivity=3)[0, 0, 0] == 3
    assert keep_largest_component(labels, connectivity=1)[0, 0, 0] == 0
    assert keep_largest_component(labels, only=[1, 2])[0, 0, 0] == 3  # label 3 not filtered


def _random_islands(rng: np.random.Generator, connectivity: int) -> np.ndarray:
    """Four labels, each in several islands of random size; seeds are redrawn until every
    label's largest island is unique (ties are broken differently by MONAI and medseg)."""
    structure = ndimage.generate_binary_structure(3, connectivity)
    while True:
        labels = np.zeros((40, 36, 24), np.uint8)
        for value in (1, 2, 3, 4):
            seeds = rng.random(labels.shape) > 0.998
            labels[ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 3)))] = value
        sizes = [np.sort(np.bincount(ndimage.label(labels == v, structure)[0].ravel())[1:])
                 for v in (1, 2, 3, 4)]
        if all(len(s) > 1 and s[-1] > s[-2] for s in sizes):
            return labels


@pytest.mark.parametrize("connectivity", [1, 3])
def test_matches_monai_on_random_multilabel_maps(connectivity):
    from monai.transforms import KeepLargestConnectedComponent

    labels = _random_islands(np.random.default_rng(connectivity), connectivity)
    monai = KeepLargestConnectedComponent(applied_labels=[1, 2, 3, 4], is_onehot=False,
                                          independent=True, connectivity=connectivity)
    expected = monai(torch.from_numpy(labels[None].astype(np.int64)))[0].numpy()
    np.testing.assert_array_equal(keep_largest_component(labels, connectivity=connectivity),
                                  expected)


def test_rejects_bad_input():
    with pytest.raises(UsageError, match="integer"):
        keep_largest_component(np.zeros((3, 3, 3), np.float32))
    with pytest.raises(UsageError, match="connectivity"):
        keep_largest_component(np.zeros((3, 3, 3), np.uint8), connectivity=4)


def test_apply_postprocess_filters_only_the_card_s_labels():
    from medseg.card import Postprocess
    from medseg.inference.postprocess import apply_postprocess

    labels = np.zeros((8, 4, 4), np.uint8)
    labels[0:3, 0, 0] = 1  # kept (3 voxels)
    labels[5, 0, 0] = 1  # island of label 1
    labels[0, 2, 2] = 2  # two single-voxel pieces of label 2
    labels[7, 3, 3] = 2
    only_one = apply_postprocess(labels, Postprocess(keep_largest=(1,)))
    expected = labels.copy()
    expected[5, 0, 0] = 0
    np.testing.assert_array_equal(only_one, expected)
    everything = apply_postprocess(labels, Postprocess(keep_largest=True))
    expected[7, 3, 3] = 0  # equal sizes: the first piece in C order is kept
    np.testing.assert_array_equal(everything, expected)
    np.testing.assert_array_equal(apply_postprocess(labels, Postprocess(False)), labels)


def test_remove_small_components_by_volume_in_ml():
    from medseg.card import Postprocess
    from medseg.inference.postprocess import apply_postprocess, remove_small_components

    spacing = (2.0, 2.5, 4.0)  # 20 mm^3 = 0.02 mL per voxel
    labels = np.zeros((10, 6, 6), np.uint8)
    labels[0:5, 0, 0] = 1  # 5 voxels = 0.10 mL
    labels[7, 0, 0] = 1  # 1 voxel = 0.02 mL
    labels[7:9, 4, 4] = 1  # 2 voxels = 0.04 mL
    labels[0, 3, 3] = 2  # 1 voxel of label 2: not listed, untouched
    out = remove_small_components(labels, {1: 0.04}, spacing)
    expected = labels.copy()
    expected[7, 0, 0] = 0  # 0.02 < 0.04; the 0.04 mL piece is not under the size
    np.testing.assert_array_equal(out, expected)
    out = remove_small_components(labels, {1: 0.05, 2: 0.01}, spacing)
    expected[7:9, 4, 4] = 0
    np.testing.assert_array_equal(out, expected)
    # the card's choice: sizes, then keep-largest
    post = Postprocess(keep_largest=(2,), min_size_ml={1: 0.05})
    np.testing.assert_array_equal(apply_postprocess(labels, post, spacing), expected)
    with pytest.raises(UsageError, match="give spacing_mm"):
        apply_postprocess(labels, post)
    with pytest.raises(UsageError, match="spacing_mm must be three positive"):
        remove_small_components(labels, {1: 0.05}, (1.0, 0.0, 1.0))
