"""``predict_volume``: geometry of the output, labels against a thresholding reference, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.errors import CheckpointError, DataError, UsageError
from medseg.inference.predict import Prediction, PredictOptions, predict_case, predict_volume
from medseg.runtime import Runtime
from medseg.data.phantom import make_phantom
from medseg.volume import Volume

from .predict_helpers import (
    HIGH_HU,
    LOW_HU,
    threshold_card,
    threshold_labels,
    threshold_model,
    threshold_unet,
)

CPU = Runtime.cpu()


@pytest.mark.parametrize("orientation,oblique", [("RAS", 0.0), ("LPS", 0.0), ("PIR", 0.0),
                                                  ("LPS", 25.0)])
def test_labels_equal_thresholding_on_input_grid(threshold_ckpt, phantom, orientation, oblique):
    case = phantom(orientation, oblique)
    result = predict_case(threshold_ckpt, case.image, runtime=CPU)
    assert isinstance(result, Prediction) and result.probabilities is None
    labels = result.labels
    assert labels.array.dtype == np.uint8
    assert labels.shape == case.image.shape
    np.testing.assert_array_equal(labels.affine, case.image.affine)
    expected = threshold_labels(case.image.array)
    assert set(np.unique(expected)) == {0, 1, 2}
    np.testing.assert_array_equal(labels.array, expected)
    assert set(result.timings_s) == {"preprocess", "network", "invert"}


@pytest.mark.parametrize("orientation,oblique", [("LPS", 0.0), ("LAS", 20.0)])
def test_resampling_checkpoint_keeps_input_grid_and_is_not_mirrored(resampling_ckpt, phantom,
                                                                    orientation, oblique):
    """Reorient to RAS + resample to 5x5x6 mm and back: same grid, labels where the input says."""
    case = phantom(orientation, oblique)
    labels = predict_case(resampling_ckpt, case.image, runtime=CPU).labels
    assert labels.shape == case.image.shape
    np.testing.assert_array_equal(labels.affine, case.image.affine)
    expected = threshold_labels(case.image.array)
    agreement = float((labels.array == expected).mean())
    mirrored = float((labels.array[::-1] == expected).mean())
    assert agreement > 0.95, agreement
    # mirroring x would move the (asymmetric) structures: much lower agreement on foreground
    fg = expected > 0
    fg_agreement = (labels.array[fg] == expected[fg]).mean()
    assert fg_agreement > (labels.array[::-1][fg] == expected[fg]).mean() + 0.2
    assert agreement > mirrored


def test_tta_and_probabilities(threshold_ckpt, phantom):
    case = phantom("LPS")
    plain = predict_case(threshold_ckpt, case.image, runtime=CPU).labels
    options = PredictOptions(tta=True, save_probabilities=True, overlap=0.5, batch_size=2)
    result = predict_case(threshold_ckpt, case.image, options, CPU)
    np.testing.assert_array_equal(result.labels.array, plain.array)
    probs = result.probabilities
    assert probs.shape == (3,) + case.image.shape and probs.array.dtype == np.float32
    np.testing.assert_array_equal(probs.affine, case.image.affine)
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(probs.array, axis=0), plain.array)


def test_bare_module_with_its_card(phantom):
    case = phantom("RAS")
    result = predict_case(threshold_model(roi=(16, 16, 16)), case.image, runtime=CPU)
    np.testing.assert_array_equal(result.labels.array, threshold_labels(case.image.array))
    assert result.labels.array.dtype == np.uint8
    with pytest.raises(UsageError, match=r"LoadedModel\(module, card\)"):
        predict_case(threshold_unet(), case.image, runtime=CPU)


def test_channel_mismatch_names_image_and_checkpoint(two_channel_ckpt, phantom):
    case = phantom("RAS")
    image = Volume(case.image.array, case.image.affine, {"source": "/data/ct_1.nii.gz"})
    with pytest.raises(DataError) as err:
        predict_case(two_channel_ckpt, image, runtime=CPU)
    assert str(err.value).startswith("/data/ct_1.nii.gz: checkpoint ")
    assert "expects 2 input channels, image has 1 channel" in str(err.value)
    assert str(two_channel_ckpt) in str(err.value)
    two = Volume(np.stack([case.image.array] * 2), case.image.affine)
    labels = predict_case(two_channel_ckpt, two, runtime=CPU).labels  # channel 0 thresholds
    np.testing.assert_array_equal(labels.array, threshold_labels(case.image.array))


def test_nan_is_refused(threshold_ckpt, phantom):
    case = phantom("RAS")
    array = case.image.array.astype(np.float32)
    array[3, 4, 5] = np.nan
    image = Volume(array, case.image.affine, {"source": "/data/nan.nii.gz"})
    with pytest.raises(DataError, match=r"^/data/nan.nii.gz: image holds 1 NaN"):
        predict_case(threshold_ckpt, image, runtime=CPU)


def test_bad_checkpoint_and_device(tmp_path, phantom):
    case = phantom("RAS")
    bad = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="model.pt: not a medseg safetensors checkpoint"):
        predict_case(bad, case.image, runtime=CPU)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            predict_case(bad, case.image, runtime=Runtime.resolve("cuda"))


def test_predict_volume_returns_volumes_on_the_input_grid(threshold_ckpt):
    """predict_volume -> Volume: labels equal predict_case's; probabilities are (K, x, y, z)
    on the same grid, sum to 1 per voxel, and their argmax is the label map."""
    case = make_phantom((40, 36, 20), (4.0, 4.0, 5.0), orientation="LPS", seed=2, noise_hu=5)
    labels = predict_volume(threshold_ckpt, case.image, runtime=CPU)
    assert isinstance(labels, Volume) and labels.same_grid(case.image, tol_mm=0)
    expected = predict_case(threshold_ckpt, case.image, runtime=CPU).labels.array
    np.testing.assert_array_equal(labels.array, expected)
    probs = predict_volume(threshold_ckpt, case.image, output="probabilities", runtime=CPU)
    assert probs.shape[1:] == case.image.shape and probs.array.shape[0] >= 2
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-5)
    agree = (probs.array.argmax(axis=0) == labels.array).mean()
    assert agree >= 0.999
    with pytest.raises(UsageError, match="did you mean 'labels'"):
        predict_volume(threshold_ckpt, case.image, output="label", runtime=CPU)


def test_keep_largest_from_checkpoint_and_override(tmp_path):
    """A checkpoint with inference.keep_largest drops islands; the reference is the
    thresholded image filtered by keep_largest_component, and False overrides it."""
    from medseg.checkpoint import save_checkpoint
    from medseg.inference.postprocess import keep_largest_component

    from .predict_helpers import threshold_labels

    from medseg.card import Postprocess

    model = threshold_unet()
    card = threshold_card(model).replace(postprocess=Postprocess(keep_largest=True))
    ckpt = tmp_path / "keep.safetensors"
    save_checkpoint(ckpt, model, card)
    case = make_phantom((40, 36, 20), (4.0, 4.0, 5.0), seed=3, noise_hu=0)
    hu = case.image.array.copy()
    hu[2:4, 2:4, 2:4] = 400  # an isolated "dense" island far from the body's dense parts
    image = case.image.with_array(hu)
    raw = threshold_labels(hu)
    assert ndimage_components(raw == 2) > 1
    kept = predict_volume(ckpt, image, runtime=CPU)
    np.testing.assert_array_equal(kept.array, keep_largest_component(raw))
    assert kept.array[2, 2, 2] == 0
    plain = predict_volume(ckpt, image, options=PredictOptions(keep_largest=False), runtime=CPU)
    np.testing.assert_array_equal(plain.array, raw)
    # a per-label choice (as cross-validation writes it): only label 1 is filtered
    only_one = tmp_path / "keep1.safetensors"
    save_checkpoint(only_one, model, card.replace(postprocess=Postprocess(keep_largest=(1,))))
    kept1 = predict_volume(only_one, image, runtime=CPU)
    np.testing.assert_array_equal(kept1.array, keep_largest_component(raw, only=(1,)))
    assert kept1.array[2, 2, 2] == 2  # the dense island survives


def test_card_min_component_size_is_applied(tmp_path):
    """A card with min_size_ml (as cross-validation writes it) removes the components under
    that volume on the input grid; the reference is remove_small_components of the
    thresholded image at the image's spacing."""
    from medseg.card import Postprocess
    from medseg.checkpoint import save_checkpoint
    from medseg.inference.postprocess import remove_small_components

    model = threshold_unet()
    card = threshold_card(model).replace(postprocess=Postprocess(min_size_ml={2: 1.0}))
    ckpt = tmp_path / "min_size.safetensors"
    save_checkpoint(ckpt, model, card)
    case = make_phantom((40, 36, 20), (4.0, 4.0, 5.0), seed=3, noise_hu=0)
    hu = case.image.array.copy()
    hu[2:4, 2:4, 2:4] = 400  # 8 voxels of 0.08 mL: a 0.64 mL island of label 2
    raw = threshold_labels(hu)
    out = predict_volume(ckpt, case.image.with_array(hu), runtime=CPU)
    np.testing.assert_array_equal(out.array, remove_small_components(raw, {2: 1.0},
                                                                     (4.0, 4.0, 5.0)))
    assert raw[2, 2, 2] == 2 and out.array[2, 2, 2] == 0


def ndimage_components(mask: np.ndarray) -> int:
    from scipy import ndimage

    return ndimage.label(mask)[1]


def test_predict_case_bf16_on_cpu_matches_the_analytic_thresholds(threshold_ckpt, monkeypatch):
    """The threshold network under bf16 autocast (``amp=True`` on the CPU): labels equal the
    analytic thresholds except within a few HU of them (bf16 resolves the window to ~0.8 HU)."""
    from medseg import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "cpu_has_native_bf16", lambda: True)
    bf16_runtime = Runtime.resolve("cpu", amp=True)
    assert bf16_runtime.precision == "bf16"
    case = make_phantom((40, 36, 20), (4.0, 4.5, 5.0), seed=3, noise_hu=20.0)
    hu = case.image.array.astype(np.float64)
    fp32 = predict_case(threshold_ckpt, case.image, runtime=CPU).labels.array
    bf16 = predict_case(threshold_ckpt, case.image, runtime=bf16_runtime).labels.array
    assert (fp32 != bf16).any()  # the precision was really used
    expected = threshold_labels(hu)
    np.testing.assert_array_equal(fp32, expected)
    far = (np.abs(hu - LOW_HU) > 4) & (np.abs(hu - HIGH_HU) > 4)
    np.testing.assert_array_equal(bf16[far], expected[far])
    assert (bf16 == expected).mean() >= 0.99


def test_labels_from_interpolated_probabilities(resampling_ckpt, caplog):
    """A checkpoint that resamples to 5 x 5 x 6 mm, a 2 x 2 x 2.5 mm image:
    * default labels equal the argmax of the (full) inverted probabilities exactly, though
      they are computed slab by slab without ever holding them on the input grid;
    * they follow the analytic thresholds more closely than nearest-neighbour labels do;
    * a probability budget of 0 falls back to nearest, with a log line."""
    import logging

    from medseg.inference import predict as predict_module

    case = make_phantom((80, 72, 40), (2.0, 2.0, 2.5), orientation="LPS", seed=5, noise_hu=0)
    linear = predict_case(resampling_ckpt, case.image, runtime=CPU)
    full = predict_case(resampling_ckpt, case.image, PredictOptions(save_probabilities=True), CPU)
    np.testing.assert_array_equal(linear.labels.array, full.labels.array)
    nearest = predict_case(resampling_ckpt, case.image, PredictOptions(label_interp="nearest"),
                           CPU)
    truth = threshold_labels(case.image.array)
    agree_linear = (linear.labels.array == truth).mean()
    agree_nearest = (nearest.labels.array == truth).mean()
    # 99.2 % against 99.0 % here: at least 15 % fewer wrong voxels
    assert 1 - agree_linear < 0.85 * (1 - agree_nearest), (agree_linear, agree_nearest)
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO):
        mp.setattr(predict_module, "PROBABILITY_BUDGET_BYTES", 0)
        fallback = predict_case(resampling_ckpt, case.image, runtime=CPU)
    np.testing.assert_array_equal(fallback.labels.array, nearest.labels.array)
    assert "by nearest neighbour" in caplog.text
    with pytest.raises(UsageError, match="label_interp"):
        PredictOptions(label_interp="cubic")


def test_window_settings_of_the_card_are_the_ones_used(monkeypatch, phantom, tmp_path):
    """A checkpoint whose card says blend constant and batch_size 3 is served with both
    (before the card, predict hard-coded a Gaussian blend and its own batch size). The
    reference is medseg's own sliding window run directly with those settings, on a random
    (not pointwise) U-Net, whose windows disagree near their borders so the blend matters."""
    from medseg import models
    from medseg.card import WindowSettings
    from medseg.checkpoint import save_checkpoint
    import importlib

    sw = importlib.import_module("medseg.inference.sliding_window")
    from medseg.inference.precision import make_predictor
    from medseg.transforms.resample import as_tensor

    model = models.create("unet3d", 1, 3, depth=2, width=4, seed=0).eval()
    path = tmp_path / "constant.safetensors"
    save_checkpoint(path, model, threshold_card(model, roi=(16, 16, 8), overlap=0.5,
                                                blend="constant", batch_size=3))
    case = phantom("RAS")
    seen: list[WindowSettings] = []
    calls: list[int] = []
    real = sw._Run.prepare

    def spy(cls, predictor, image, window, **options):
        seen.append(window)
        return real(predictor_counting(predictor), image, window, **options)

    def predictor_counting(predictor):
        return lambda batch: calls.append(batch.shape[0]) or predictor(batch)

    monkeypatch.setattr(sw._Run, "prepare", classmethod(spy))
    result = predict_case(path, case.image, PredictOptions(save_probabilities=True), CPU)
    assert seen == [WindowSettings((16, 16, 8), 0.5, "constant", 3)]
    assert max(calls) == 3 and calls.count(3) >= len(calls) - 3
    monkeypatch.setattr(sw._Run, "prepare", real)
    image = as_tensor(((case.image.array + 100.0) / 400.0).clip(0, 1).astype(np.float32))
    logits = sw.sliding_window(make_predictor(model, CPU), image[None, None],
                               WindowSettings((16, 16, 8), 0.5, "constant", 3))[0]
    expected = torch.softmax(logits, dim=0).numpy()
    np.testing.assert_allclose(result.probabilities.array, expected, atol=1e-5)
    gaussian = sw.sliding_window(make_predictor(model, CPU), image[None, None],
                                 WindowSettings((16, 16, 8), 0.5, "gaussian", 3))[0]
    assert not torch.allclose(torch.softmax(gaussian, dim=0), torch.from_numpy(expected),
                              atol=1e-5)
