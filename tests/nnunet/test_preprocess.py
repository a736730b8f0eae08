"""nnU-Net-exact preprocessing and its inverse, against nnU-Net v2 itself on the same files.

The oracle is nnunetv2 (test-only): ``DefaultPreprocessor.run_case`` for the network
input and ``convert_predicted_logits_to_segmentation_with_correct_shape`` (plus the
reader's own ``write_seg``) for the way back, on hand-built plans.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.data.phantom import rotation_z
from medseg.errors import CheckpointError, DataError, GeometryError
from medseg.io import read_volume, write_volume
from medseg.transforms.nnunet import ChannelNormalization, NnunetPreprocessing
from medseg.transforms.resample_nnunet import ResamplingRule, iter_resampled, resample
from medseg.transforms.history import Cropped, Resampled
from medseg.volume import Logits, Volume, affine_from

nnunet_pre = pytest.importorskip("nnunetv2.preprocessing.preprocessors.default_preprocessor")
from nnunetv2.inference.export_prediction import (  # noqa: E402
    convert_predicted_logits_to_segmentation_with_correct_shape as nnunet_export,
)
from nnunetv2.preprocessing.resampling.default_resampling import (  # noqa: E402
    resample_data_or_seg_to_shape,
)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

CT_PROPS = {"mean": 40.5, "std": 120.25, "percentile_00_5": -900.0, "percentile_99_5": 600.0,
            "median": 30.0, "min": -1000.0, "max": 1500.0}
LABELS = {"background": 0, "a": 1, "b": 2}


def nnunet_image(prepared) -> np.ndarray:
    """The network input in nnU-Net's frame (the window frame's axes reversed)."""
    return prepared.image.array.transpose(0, 3, 2, 1)


def network_shape(prepared) -> tuple[int, ...]:
    """The network grid (a0, a1, a2) in nnU-Net's frame."""
    return tuple(prepared.image.spatial_shape[::-1])


def crop_box(prepared) -> tuple[tuple[int, int], ...]:
    """nnU-Net's crop box [start, stop) per axis of its frame, from the History's steps."""
    crop = next(s for s in prepared.history.steps if isinstance(s, Cropped))
    size = next(s for s in prepared.history.steps if isinstance(s, Resampled)).shape
    return tuple((a, a + n) for a, n in zip(crop.start, size))[::-1]


def window_logits(prepared, logits) -> Logits:
    """nnU-Net-frame logits (K, a0, a1, a2) as the window gives them (window frame)."""
    return Logits(np.asarray(logits).transpose(0, 3, 2, 1), prepared.image.affine)


def labels_of(prepared, logits, slab_voxels: int | None = None) -> np.ndarray:
    """Labels on the input grid from the History, ``slab_voxels`` per resampled slab."""
    history = prepared.history
    if slab_voxels is not None:
        steps = tuple(dataclasses.replace(s, rule=dataclasses.replace(
            s.rule, slab_voxels=slab_voxels)) if isinstance(s, Resampled) else s
            for s in history.steps)
        history = dataclasses.replace(history, steps=steps)
    return history.restore_labels(window_logits(prepared, logits)).array


def probabilities_of(prepared, logits) -> np.ndarray:
    """Probabilities (K, x, y, z) on the input grid from the History."""
    return prepared.history.invert(window_logits(prepared, logits)).array


def _rule(order: int) -> dict:
    return {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None}


def make_plans(schemes, masks, spacing, transpose=(0, 1, 2), reader="SimpleITKIO",
               config="3d_fullres") -> dict:
    """A plans dict as nnU-Net's planner writes it (the keys preprocessing reads)."""
    backward = [int(i) for i in np.argsort(transpose)]
    configuration = {
        "data_identifier": "nnUNetPlans_" + config, "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [16] * len(spacing), "spacing": list(spacing),
        "normalization_schemes": list(schemes), "use_mask_for_norm": list(masks),
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": _rule(3),
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**_rule(1), "is_seg": True},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": _rule(1),
        "architecture": {"network_class_name": "n/a", "arch_kwargs": {},
                         "_kw_requires_import": []},
    }
    return {
        "dataset_name": "Dataset999_Phantom", "plans_name": "nnUNetPlans",
        "image_reader_writer": reader, "label_manager": "LabelManager",
        "transpose_forward": list(transpose), "transpose_backward": backward,
        "configurations": {config: configuration},
        "foreground_intensity_properties_per_channel": {
            str(c): CT_PROPS for c in range(len(schemes))},
    }


def body(shape, seed: int, zero_border: bool = True) -> np.ndarray:
    """A smooth, asymmetric float32 phantom (x, y, z): an off-centre ellipsoid body with
    a hole, zero outside when ``zero_border``, plus noise."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    radius = ((grid[0] - 0.1) / 0.8) ** 2 + ((grid[1] + 0.05) / 0.7) ** 2 + (grid[2] / 0.9) ** 2
    image = (300 * grid[0] + 150 * grid[1] ** 2 - 80 * grid[2] + 200).astype(np.float32)
    image += rng.normal(0, 30, shape).astype(np.float32)
    if zero_border:
        image[radius > 1] = 0
        image[radius < 0.05] = 0  # a hole that the crop's fill keeps
    return image


def write_case(tmp_path, arrays, affine, name="case"):
    files = []
    for c, array in enumerate(arrays):
        path = tmp_path / f"{name}_{c:04d}.nii.gz"
        write_volume(Volume(array, affine), path)
        files.append(str(path))
    return files


def read_case(files) -> Volume:
    volumes = [read_volume(f) for f in files]
    return Volume(np.stack([v.array for v in volumes]), volumes[0].affine)


def nnunet_run(files, plans, config="3d_fullres", dataset=None):
    manager = PlansManager(plans)
    configuration = manager.get_configuration(config)
    dataset = dataset or {"labels": LABELS, "file_ending": ".nii.gz"}
    pre = nnunet_pre.DefaultPreprocessor(verbose=False)
    data, _, props = pre.run_case(files, None, manager, configuration, dataset)
    return data, props, manager, configuration


CASES = {
    # name: (orientation, spacing (x, y, z) mm, oblique deg, schemes, masks, target spacing,
    #        transpose_forward, reader)
    "ras-iso-ct": ("RAS", (1.0, 1.0, 1.0), 0, ["CTNormalization"], [False], (1.5, 1.2, 0.8),
                   (0, 1, 2), "SimpleITKIO"),
    "lps-aniso-mr-2ch": ("LPS", (0.7, 0.7, 5.0), 0, ["ZScoreNormalization", "NoNormalization"],
                         [True, False], (5.0, 0.9, 0.9), (0, 1, 2), "SimpleITKIO"),
    "oblique-reorient": ("LPI", (0.8, 1.1, 2.5), 25, ["ZScoreNormalization", "CTNormalization"],
                         [False, False], (2.0, 1.0, 1.3), (0, 2, 1), "NibabelIOWithReorient"),
    "pir-aniso-nibabel": ("PIR", (0.7, 5.0, 0.7), 0, ["RescaleTo01Normalization"], [False],
                          (1.0, 0.6, 0.9), (2, 0, 1), "NibabelIO"),
}


def _prepare(tmp_path, key, seed=0, config="3d_fullres", target=None):
    orient, spacing, oblique, schemes, masks, default_target, transpose, reader = CASES[key]
    affine = affine_from(spacing, orient, origin_mm=(-20.0, 12.0, 7.5),
                         rotation=rotation_z(oblique))
    shape = (30, 26, 11) if spacing[2] > 3 else (26, 11, 30) if spacing[1] > 3 else (24, 22, 20)
    arrays = [body(shape, seed + c) for c in range(len(schemes))]
    files = write_case(tmp_path, arrays, affine)
    plans = make_plans(schemes, masks, target or default_target, transpose, reader, config)
    return files, plans


@pytest.mark.parametrize("key", sorted(CASES))
def test_network_input_equals_nnunet(tmp_path, key):
    files, plans = _prepare(tmp_path, key)
    ref, props, _, _ = nnunet_run(files, plans)
    pre = NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS})
    prepared = pre.apply(read_case(files))
    image = nnunet_image(prepared)
    assert image.dtype == np.float32
    assert image.shape == ref.shape
    np.testing.assert_allclose(image, ref, rtol=0, atol=1e-5)
    assert np.array_equal(image, ref)  # bitwise: same functions, same order
    assert crop_box(prepared) == tuple(tuple(b) for b in props["bbox_used_for_cropping"])
    for axis in range(1, 4):  # the comparison would see a flip
        assert not np.allclose(np.flip(image, axis), ref, atol=1e-3)


def test_transposed_or_flipped_input_fails(tmp_path):
    """A medseg-side axis mistake (here: the image's x and y swapped) is caught."""
    files, plans = _prepare(tmp_path, "ras-iso-ct")
    ref, *_ = nnunet_run(files, plans)
    volume = read_case(files)
    for array in (volume.array.transpose(0, 2, 1, 3), volume.array[:, ::-1]):
        wrong = NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS}).apply(
            Volume(np.ascontiguousarray(array), volume.affine))
        wrong = nnunet_image(wrong)
        assert wrong.shape != ref.shape or not np.allclose(wrong, ref, atol=1e-3)


def _logits(shape, k, seed):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.normal(0, 1, (k, *shape)), axis=1)  # ties are unlikely
    return torch.from_numpy(smooth.astype(np.float16))


def _nnunet_labels_xyz(seg, files, props, manager, tmp_path):
    """nnU-Net's segmentation written by its own reader/writer, read back (x, y, z)."""
    out = tmp_path / "nnunet_seg.nii.gz"
    manager.image_reader_writer_class().write_seg(seg, str(out), props)
    return np.asarray(nib.load(str(out)).dataobj)


@pytest.mark.parametrize("key", sorted(CASES))
def test_labels_and_probabilities_equal_nnunet_export(tmp_path, key):
    files, plans = _prepare(tmp_path, key, seed=3)
    _, props, manager, configuration = nnunet_run(files, plans)
    label_manager = manager.get_label_manager({"labels": LABELS})
    prepared = NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS}).apply(
        read_case(files))
    logits = _logits(network_shape(prepared), 3, seed=7)
    seg, probs = nnunet_export(logits.clone(), manager, configuration, label_manager, props,
                               return_probabilities=True, num_threads_torch=1)
    labels = labels_of(prepared, logits, 97)  # many slabs
    expected = _nnunet_labels_xyz(seg, files, props, manager, tmp_path)
    assert labels.dtype == np.uint8 and labels.shape == read_case(files).spatial_shape
    assert np.array_equal(labels, expected) and set(np.unique(labels)) == {0, 1, 2}
    ours = probabilities_of(prepared, logits)
    if CASES[key][-1] == "NibabelIOWithReorient":  # nnU-Net's are in the RAS frame
        ornt = nib.orientations.io_orientation(read_case(files).affine)
        ours = np.moveaxis(nib.orientations.apply_orientation(np.moveaxis(ours, 0, -1), ornt),
                           -1, 0)
    np.testing.assert_allclose(ours, probs.transpose(0, 3, 2, 1), rtol=0, atol=1e-4)
    assert ours.shape[0] == 3 and np.allclose(ours.sum(axis=0), 1, atol=1e-5)


def test_2d_configuration(tmp_path):
    files, plans = _prepare(tmp_path, "lps-aniso-mr-2ch", config="2d", target=(0.9, 0.8))
    ref, props, manager, configuration = nnunet_run(files, plans, config="2d")
    pre = NnunetPreprocessing.from_plans(plans, "2d", {"labels": LABELS})
    assert pre.spacing == (0.9, 0.8)
    prepared = pre.apply(read_case(files))
    assert np.array_equal(nnunet_image(prepared), ref)
    assert nnunet_image(prepared).shape[1] == props["shape_after_cropping_and_before_resampling"][0]
    logits = _logits(network_shape(prepared), 3, seed=1)
    seg = nnunet_export(logits.clone(), manager, configuration,
                        manager.get_label_manager({"labels": LABELS}), props,
                        num_threads_torch=1)
    expected = _nnunet_labels_xyz(seg, files, props, manager, tmp_path)
    assert np.array_equal(labels_of(prepared, logits, 300), expected)


def test_region_based_dataset(tmp_path):
    dataset = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
               "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
    files, plans = _prepare(tmp_path, "ras-iso-ct", seed=5)
    _, props, manager, configuration = nnunet_run(files, plans, dataset=dataset)
    pre = NnunetPreprocessing.from_plans(plans, "3d_fullres", dataset)
    assert pre.regions == ((1, 2, 3), (2, 3), (3,)) and pre.regions_class_order == (1, 2, 3)
    prepared = pre.apply(read_case(files))
    logits = _logits(network_shape(prepared), 3, seed=2)
    seg, probs = nnunet_export(logits.clone(), manager, configuration,
                               manager.get_label_manager(dataset), props,
                               return_probabilities=True, num_threads_torch=1)
    expected = _nnunet_labels_xyz(seg, files, props, manager, tmp_path)
    labels = labels_of(prepared, logits, 200)
    assert np.array_equal(labels, expected) and set(np.unique(labels)) == {0, 1, 2, 3}
    ours = probabilities_of(prepared, logits)
    np.testing.assert_allclose(ours, probs.transpose(0, 3, 2, 1), rtol=0, atol=1e-4)
    assert not crop_box(prepared) == ((0, 24), (0, 22), (0, 20))  # cropping happened
    assert ours[:, 0, 0, 0].tolist() == [0, 0, 0]  # regions: no background outside the box


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("spacing, new_spacing, shape", [
    ((1.0, 1.0, 1.0), (2.0, 0.7, 1.3), (13, 7, 10)),  # 3D pass
    ((5.0, 0.7, 0.7), (1.0, 0.8, 0.9), (13, 7, 10)),  # separate along a0, z resampled
    ((0.7, 0.7, 4.0), (0.9, 0.5, 4.0), (13, 7, 10)),  # separate along a2, z kept
    # weights 0.2 / 0.8 and 5/8 / 3/8: float16 logits interpolate onto exact rounding ties,
    # which float64 rounding alone would round either way
    ((5.0, 0.9, 0.9), (5.0, 0.6, 0.6), (9, 30, 26)),
    ((1.0, 1.0, 1.0), (0.6, 0.8, 1.6), (30, 29, 5)),
])
def test_slabs_equal_nnunet_resampling(spacing, new_spacing, shape, order):
    data = _logits((9, 11, 8) if shape[0] == 13 else (9, 18, 16), 3, seed=order).numpy()
    ref = resample_data_or_seg_to_shape(data, shape, spacing, new_spacing, False, order, 0, None)
    rule = ResamplingRule(order, 0, None)
    axis = rule.separate_axis(spacing, new_spacing)
    assert np.array_equal(resample(data, shape, axis, rule), ref)
    out = np.zeros_like(ref)
    for index, block in iter_resampled(data, shape, axis, rule, slab_voxels=40):
        out[index] = block
    assert np.array_equal(out, ref)


def test_separate_axis_rule():
    rule = ResamplingRule(order=1)
    assert rule.separate_axis((5.0, 0.7, 0.7), (1.0, 1.0, 1.0)) == 0
    assert rule.separate_axis((1.0, 1.0, 1.0), (0.8, 0.8, 3.5)) == 2  # from the new spacing
    assert rule.separate_axis((1.0, 1.0, 2.9), (1.0, 1.0, 1.0)) is None  # ratio 2.9 <= 3
    assert rule.separate_axis((4.0, 4.0, 1.0), (1.0, 1.0, 1.0)) is None  # two coarse axes
    assert ResamplingRule(force_separate_z=True).separate_axis((1, 2, 1.5), (1, 1, 1)) == 1
    assert ResamplingRule(force_separate_z=False).separate_axis((9, 1, 1), (1, 1, 1)) is None


def test_labels_memory_is_bounded(tmp_path):
    """Upsampling 8 classes to 96 x 96 x 64: the (K, native) float32 array would be 18.9 MB
    (nnU-Net's float64 one 37.7 MB); the slab-wise labels stay near the uint8 labels."""
    array = body((96, 96, 64), 0, zero_border=False)
    pre = NnunetPreprocessing.from_plans(
        make_plans(["ZScoreNormalization"], [False], (3.0, 3.0, 3.0)), "3d_fullres",
        {"labels": LABELS})
    prepared = pre.apply(Volume(array, np.eye(4)))
    k = 8
    logits = _logits(network_shape(prepared), k, seed=0)
    native = 96 * 96 * 64
    full = k * native * 4
    tracemalloc.start()
    labels = labels_of(prepared, logits, 96 * 96)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # labels (1 B/voxel) + one slab: K float16 values and their float32 copy for the running
    # maximum, float64 values and plane-resampled source slices (6K + 32 B per voxel) + slack
    bound = native + 96 * 96 * (6 * k + 32) + 400_000
    assert peak < bound < full / 10
    full_labels = labels_of(prepared, logits, native)
    assert np.array_equal(labels, full_labels)


def test_round_trip_and_json(tmp_path):
    plans = make_plans(["CTNormalization", "ZScoreNormalization"], [False, True],
                       (2.5, 0.75, 0.75), (2, 0, 1), "NibabelIOWithReorient")
    pre = NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS})
    data = json.loads(json.dumps(pre.to_dict()))
    assert data["kind"] == "nnunet"
    assert NnunetPreprocessing.from_dict(data) == pre
    assert pre.normalization[0] == ChannelNormalization(
        "CTNormalization", False, 40.5, 120.25, -900.0, 600.0)
    assert pre.transpose_forward == (2, 0, 1) and pre.spacing == (2.5, 0.75, 0.75)


def test_inherited_configuration():
    plans = make_plans(["CTNormalization"], [False], (1.0, 1.0, 1.0))
    plans["configurations"]["3d_big"] = {"inherits_from": "3d_fullres", "spacing": [2, 2, 2]}
    pre = NnunetPreprocessing.from_plans(plans, "3d_big", {"labels": LABELS})
    assert pre.spacing == (2.0, 2.0, 2.0) and pre.normalization[0].scheme == "CTNormalization"


@pytest.mark.parametrize("edit, needle", [
    (lambda p, c: c.update(normalization_schemes=["ZScoreNormalisation"]), "ZScoreNormalization"),
    (lambda p, c: c.update(resampling_fn_data="resample_torch_fornnunet"), "resampling"),
    (lambda p, c: p.update(image_reader_writer="Tiff3DIO"), "reader"),
    (lambda p, c: c.update(preprocessor_name="MyPreprocessor"), "preprocessor"),
    (lambda p, c: p["foreground_intensity_properties_per_channel"]["0"].pop("std"), "'std'"),
    (lambda p, c: c.pop("spacing"), "'spacing'"),
])
def test_bad_plans_name_the_file(edit, needle):
    plans = json.loads(json.dumps(make_plans(["CTNormalization"], [False], (1, 1, 1))))
    edit(plans, plans["configurations"]["3d_fullres"])
    with pytest.raises(CheckpointError, match=needle) as info:
        NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS},
                                       source="/models/x/plans.json")
    assert str(info.value).startswith("/models/x/plans.json: ")


def test_unknown_configuration_and_channel_mismatch():
    plans = make_plans(["CTNormalization"], [False], (1, 1, 1))
    with pytest.raises(CheckpointError, match="did you mean '3d_fullres'"):
        NnunetPreprocessing.from_plans(plans, "3d_fulres", {"labels": LABELS})
    pre = NnunetPreprocessing.from_plans(plans, "3d_fullres", {"labels": LABELS})
    with pytest.raises(DataError, match="2 channel"):
        pre.apply(Volume(np.ones((2, 8, 8, 8), np.float32), np.eye(4)))
    prepared = pre.apply(Volume(body((8, 8, 8), 0), np.eye(4)))
    with pytest.raises(GeometryError, match="preprocessed grid"):
        labels_of(prepared, torch.zeros((3, 2, 2, 2)))


def test_ct_normalization_by_hand():
    norm = ChannelNormalization("CTNormalization", False, 10.0, 4.0, -20.0, 30.0)
    image = np.array([-100.0, 0.0, 18.0, 50.0], dtype=np.float32)
    assert norm.apply(image, None).tolist() == [-7.5, -2.5, 2.0, 5.0]
    zscore = ChannelNormalization("ZScoreNormalization", True)
    image = np.array([0.0, 2.0, 4.0, 0.0], dtype=np.float32)
    mask = np.array([False, True, True, False])
    assert zscore.apply(image, mask).tolist() == [0.0, -1.0, 1.0, 0.0]  # mean 3, std 1
