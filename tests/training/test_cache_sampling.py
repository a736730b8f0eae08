"""Preprocessing cache (memory-mapped, keyed, reused) and patch samplers (balanced, seeded, padded)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medseg.data.cache import CachedCase, build_cache, cache_case, foreground_indices
from medseg.data.manifest import load_manifest, read_case
from medseg.data.sampling import PatchDataset, PatchSampler, collate_batch, crop_padded
from medseg.errors import UsageError
from medseg.transforms import Preprocessing

PRE = {"orientation": "RAS", "spacing_mm": None,
       "intensity": {"mode": "ct", "window": [-200, 700]}, "crop_foreground": False}


def test_foreground_indices_match_flatnonzero():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(7, 5, 6)).astype(np.uint8)
    indices, ranges = foreground_indices(label, max_per_class=10**6)
    assert sorted(ranges) == [1, 2, 3]
    for value, (a, b) in ranges.items():
        np.testing.assert_array_equal(indices[a:b], np.flatnonzero(label.ravel() == value))
    capped, ranges = foreground_indices(label, max_per_class=5, seed=1)
    for value, (a, b) in ranges.items():
        assert b - a == 5 and set(capped[a:b]) <= set(np.flatnonzero(label.ravel() == value))
    empty, none = foreground_indices(np.zeros((3, 3, 3), np.uint8), 10)
    assert empty.size == 0 and none == {}


def test_cache_matches_preprocessing_and_is_reused(msd_dataset, tmp_path):
    case = load_manifest(msd_dataset).cases[0]
    pre = Preprocessing.from_config(PRE)
    cached = cache_case(case, pre, tmp_path / "cache")
    image, label = read_case(case)
    out = pre.apply(image, label)
    image_t, label_t = out.image, out.label
    assert isinstance(cached.image, np.memmap) and cached.image.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(cached.image), image_t.array)
    np.testing.assert_array_equal(np.asarray(cached.label), label_t.array)
    np.testing.assert_allclose(cached.affine, image_t.affine)
    for value in range(1, 6):
        np.testing.assert_array_equal(cached.indices_of(value),
                                      np.flatnonzero(label_t.array.ravel() == value))
    assert cached.pad_value == [float(image_t.array.min())]
    stamp = (cached.folder / "image.npy").stat().st_mtime_ns
    again = cache_case(case, Preprocessing.from_config(PRE), tmp_path / "cache")
    assert again.folder == cached.folder and (again.folder / "image.npy").stat().st_mtime_ns == stamp
    # a new preprocessing config gives a new entry
    other = cache_case(case, Preprocessing.from_config({**PRE, "intensity": {"mode": "none"}}),
                       tmp_path / "cache")
    assert other.folder != cached.folder and float(np.max(other.image)) > 1.0
    # touching the source file gives a new key too
    st = case.images[0].stat()
    os.utime(case.images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_case(case, pre, tmp_path / "cache").folder != cached.folder
    # no temporary files left behind, and entries reopen from meta.json alone
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]
    assert CachedCase.open(cached.folder).classes == cached.classes


def test_cache_stores_float_label_files_as_integer_labels(msd_dataset, tmp_path):
    """Label files stored as floats (common) are cached as uint8 (medseg.argmax.label_dtype)
    with the same values; non-integer values are refused, naming the file."""
    from medseg.errors import DataError
    from medseg.io import read_volume, write_volume

    case = load_manifest(msd_dataset).cases[0]
    original = read_volume(case.label)
    write_volume(original.with_array(original.array.astype(np.float32)), case.label)
    assert read_volume(case.label).array.dtype == np.float32
    cached = cache_case(case, Preprocessing.from_config(PRE), tmp_path / "cache")
    assert cached.label.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(cached.label), original.array)  # RAS, no resampling
    write_volume(original.with_array(original.array * np.float32(1.5)), case.label)
    with pytest.raises(DataError, match=r"label map holds non-integer label \d\.5; labels must") as err:
        cache_case(case, Preprocessing.from_config(PRE), tmp_path / "cache")
    assert err.value.path == str(case.label)


def test_crop_padded_by_hand():
    a = np.arange(4 * 3 * 2).reshape(4, 3, 2)
    out = crop_padded(a, (-1, 1, 0), (3, 3, 2), pad_value=-5)
    assert out.shape == (3, 3, 2)
    assert (out[0] == -5).all() and (out[:, 2] == -5).all()
    np.testing.assert_array_equal(out[1:, :2], a[0:2, 1:3])
    multi = crop_padded(np.zeros((2, 2, 2, 2)), (1, 1, 1), (2, 2, 2), pad_value=[7, 9])
    assert multi[0, 1, 1, 1] == 7 and multi[1, 1, 1, 1] == 9 and multi[0, 0, 0, 0] == 0


@pytest.fixture
def cached_cases(msd_dataset, tmp_path):
    cases = load_manifest(msd_dataset).cases
    return build_cache(cases, Preprocessing.from_config(PRE), tmp_path / "cache")


def test_balanced_sampling_hits_requested_class(cached_cases):
    rng = np.random.default_rng(0)
    case = cached_cases[0]
    for cls in (2, 5):
        probs = np.zeros(6)
        probs[cls] = 1.0
        sampler = PatchSampler((8, 8, 8), class_probabilities=probs)
        for _ in range(30):
            image, label = sampler.sample(case, rng)
            assert image.shape == (1, 8, 8, 8) and label.shape == (8, 8, 8)
            assert (label == cls).any()
    # foreground_ratio=1: every patch holds foreground; 0: share ~ foreground volume share
    fg = PatchSampler((4, 4, 4), foreground_ratio=1.0)
    assert all((fg.sample(case, rng)[1] > 0).any() for _ in range(50))
    uniform = PatchSampler((1, 1, 1), foreground_ratio=0.0)
    hits = np.mean([uniform.sample(case, rng)[1].item() > 0 for _ in range(2000)])
    share = float((np.asarray(case.label) > 0).mean())
    assert abs(hits - share) < 0.05


def test_patch_larger_than_case_is_padded(cached_cases):
    case = cached_cases[0]
    sampler = PatchSampler((32, 30, 20), foreground_ratio=0.0)
    image, label = sampler.sample(case, np.random.default_rng(0))
    assert image.shape == (1, 32, 30, 20)
    # case is 24 x 24 x 16: centred, padded with the case minimum and label 0
    np.testing.assert_array_equal(image[0, 4:28, 3:27, 2:18], np.asarray(case.image[0]))
    assert (image[0, :4] == case.pad_value[0]).all() and (label[:4] == 0).all()
    with pytest.raises(UsageError, match="patch_size"):
        PatchSampler((8, 0, 8))


def test_dataset_is_seeded_and_independent_of_workers(cached_cases):
    sampler = PatchSampler((8, 8, 8), foreground_ratio=0.5)
    ds = PatchDataset(cached_cases[:3], sampler, samples_per_epoch=8, seed=3, rank=0)

    def draw(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers,
                                             collate_fn=collate_batch)
        return [b for b in loader]

    ds.set_epoch(1)
    a, b = draw(0), draw(2)
    for (ia, la), (ib, lb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    ds.set_epoch(2)
    c = draw(0)
    assert not torch.equal(a[0][0], c[0][0])
    other_rank = PatchDataset(cached_cases[:3], sampler, 8, seed=3, rank=1)
    other_rank.set_epoch(1)
    assert not torch.equal(other_rank[0][0], a[0][0][0])
    assert ds.state_dict() == {"seed": 3, "epoch": 2, "rank": 0}


def _crop_oracle(array, start, size, pad):
    out = np.empty(array.shape[:-3] + tuple(size), array.dtype)
    for c in range(out.shape[0]) if out.ndim == 4 else []:
        out[c] = pad[c]
    if out.ndim == 3:
        out[...] = pad
    for i in np.ndindex(*size):
        j = tuple(s + k for s, k in zip(start, i))
        if all(0 <= jj < n for jj, n in zip(j, array.shape[-3:])):
            out[(Ellipsis, *i)] = array[(Ellipsis, *j)]
    return out


def test_crop_padded_against_voxel_loop():
    rng = np.random.default_rng(1)
    for _ in range(100):
        shape = tuple(rng.integers(1, 6, 3))
        array = rng.integers(0, 100, (2, *shape))
        size, start = tuple(rng.integers(1, 7, 3)), tuple(rng.integers(-7, 7, 3))
        np.testing.assert_array_equal(crop_padded(array, start, size, [-1, -2]),
                                      _crop_oracle(array, start, size, [-1, -2]))
        np.testing.assert_array_equal(crop_padded(array[0], start, size, 5),
                                      _crop_oracle(array[0], start, size, 5))


def test_batched_fetch_equals_single_items(cached_cases):
    ds = PatchDataset(cached_cases, PatchSampler((20, 8, 30), foreground_ratio=0.5), 6, seed=2)
    images, labels = ds.__getitems__([0, 3, 5])
    assert images.shape == (3, 1, 20, 8, 30) and labels.dtype == torch.uint8
    for slot, index in enumerate([0, 3, 5]):
        image, label = ds[index]
        assert torch.equal(images[slot], image) and torch.equal(labels[slot], label)
