import pytest
import torch

from medseg.card import WindowSettings as W
from medseg.errors import GeometryError, UsageError
from medseg.inference import (
    estimate_peak_memory,
    importance_map,
    sliding_window,
    sliding_window_argmax,
    window_starts,
)


@pytest.fixture(scope="module")
def pointwise():
    torch.manual_seed(0)
    return torch.nn.Conv3d(2, 5, 1).eval()


@pytest.mark.parametrize("roi", [(16, 16, 16), (24, 12, 20), (64, 64, 64)])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_net_equals_full_forward(pointwise, roi, overlap, blend):
    x = torch.randn(2, 2, 37, 30, 26, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = pointwise(x)
    out = sliding_window(pointwise, x, W(roi, overlap, blend, batch_size=3))
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    labels = sliding_window_argmax(pointwise, x, W(roi, overlap, blend, batch_size=3))
    assert labels.dtype == torch.uint8 and labels.shape == (2, 37, 30, 26)
    assert torch.equal(labels, out.argmax(1).to(torch.uint8))


def test_argmax_slab_equals_full_argmax_exactly_with_random_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv3d(4, 7, 3, padding=1)).eval()
    x = torch.randn(1, 1, 40, 33, 47)
    mask = torch.zeros(40, 33, 47, dtype=torch.bool)
    mask[5:20, 5:30, 3:25] = True
    window = W((16, 16, 12), 0.5, batch_size=3)
    for axes, kw in (((), {}), ((), {"skip_empty": mask}), ((2,), {}),
                     ((), {"out_dtype": torch.float16})):
        full = sliding_window(net, x, window.replace(mirror_axes=axes), **kw)
        slab = sliding_window_argmax(net, x, window.replace(mirror_axes=axes), **kw)
        assert torch.equal(slab, full.argmax(1).to(torch.uint8)), (axes, kw)


@pytest.mark.parametrize("size,roi,overlap", [
    (160, 96, 0.5), (128, 96, 0.5), (100, 32, 0.5), (37, 16, 0.75), (50, 24, 0.7),
    (61, 20, 0.25), (96, 96, 0.5), (97, 96, 0.0), (20, 16, 0.9),
])
def test_window_starts_equal_monai_dense_patch_slices(size, roi, overlap):
    pytest.importorskip("monai")
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    theirs = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
    assert window_starts(size, roi, overlap) == theirs


def test_agrees_with_monai_sliding_window_inference():
    """Same random U-Net, sizes where windows do not tile evenly: the blended outputs match
    MONAI's to float32 rounding, so the argmax agrees wherever the logits are not tied."""
    pytest.importorskip("monai")
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 4, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    for shape, roi, overlap in [((80, 64, 56), (32, 32, 32), 0.5),
                                ((61, 50, 37), (24, 24, 16), 0.6)]:
        x = torch.randn(1, 1, *shape)
        with torch.inference_mode():
            ref = sliding_window_inference(x, roi, 4, net, overlap=overlap, mode="gaussian",
                                           sigma_scale=0.125)
        out = sliding_window(net, x, W(roi, overlap, "gaussian"))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        agree = (out.argmax(1) == ref.argmax(1)).float().mean().item()
        assert agree >= 0.999, (shape, agree)


def test_volume_smaller_than_roi(pointwise):
    x = torch.randn(1, 2, 9, 20, 5)
    with torch.inference_mode():
        ref = pointwise(x)
    out = sliding_window(pointwise, x, W(16, 0.5))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    calls = []
    sliding_window(lambda t: calls.append(t.shape) or pointwise(t), x, W(16, 0.5))
    assert all(tuple(s[2:]) == (16, 16, 16) for s in calls)


def test_mirror_tta_with_flip_equivariant_net():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1, bias=True)
    with torch.no_grad():  # symmetric kernel: flipping commutes with the convolution
        w = conv.weight
        w.copy_((w + w.flip(2) + w.flip(3) + w.flip(4) + w.flip(2, 3) + w.flip(2, 4)
                 + w.flip(3, 4) + w.flip(2, 3, 4)) / 8)
    conv.eval()
    x = torch.randn(1, 1, 30, 26, 22)
    plain = sliding_window(conv, x, W(16, 0.5))
    tta = sliding_window(conv, x, W(16, 0.5, mirror_axes=(0, 1, 2)))
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=0)
    calls = []
    sliding_window(lambda t: calls.append(1) or conv(t), x,
                   W(16, 0.5, batch_size=100, mirror_axes=(0, 2)))
    assert len(calls) == 4


def _counting(net, seen: list):
    def predict(t):
        seen.append(tuple(t.shape))
        return net(t)
    return predict


def test_skip_empty_covers_only_the_mask_box(pointwise):
    """A mask in one corner: its 8 x 8 x 16 box grows to one 16^3 window at the corner; the
    windows run there equal the network, everything outside the box is one-hot background."""
    x = torch.randn(1, 2, 48, 48, 16)
    mask = torch.zeros(48, 48, 16, dtype=torch.bool)
    mask[2:10, 2:10, :] = True
    seen: list = []
    out = sliding_window(_counting(pointwise, seen), x, W((16, 16, 16), 0.5, batch_size=1),
                         skip_empty=mask)
    assert seen == [(1, 2, 16, 16, 16)]  # one window instead of 5 x 5 over the volume
    with torch.inference_mode():
        ref = pointwise(x)
    torch.testing.assert_close(out[..., :16, :16, :], ref[..., :16, :16, :], atol=1e-5, rtol=0)
    for outside in (out[0, :, 16:, :, :], out[0, :, :, 16:, :]):
        assert torch.all(outside[0] == 1) and torch.all(outside[1:] == 0)
    labels = sliding_window_argmax(pointwise, x, W(16, 0.5), skip_empty=mask)
    assert torch.equal(labels, out.argmax(1).to(torch.uint8))


def test_skip_empty_skips_empty_windows_inside_the_box(pointwise):
    """Blobs at two corners: box x, y = [2, 44) (42 voxels: window starts 0, 8, 16, 24, 26
    relative to it). Only (0, 0) and {24, 26} x {24, 26} hold mask voxels: 5 of 25 windows
    run; voxels covered only by skipped windows are exactly [1, 0, ...]."""
    x = torch.randn(1, 2, 48, 48, 16)
    mask = torch.zeros(48, 48, 16, dtype=torch.bool)
    mask[2:6, 2:6, :] = True
    mask[40:44, 40:44, :] = True
    seen: list = []
    out = sliding_window(_counting(pointwise, seen), x, W(16, 0.5, batch_size=1),
                         skip_empty=mask)
    assert window_starts(42, 16, 0.5) == [0, 8, 16, 24, 26]
    assert len(seen) == 5
    with torch.inference_mode():
        ref = pointwise(x)
    torch.testing.assert_close(out[..., 2:6, 2:6, :], ref[..., 2:6, 2:6, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., 40:44, 40:44, :], ref[..., 40:44, 40:44, :],
                               atol=1e-5, rtol=0)
    gap = out[0, :, 20:24, 20:24, :]  # absolute 20..23: only windows at 8 and 16 (skipped)
    assert torch.all(gap[0] == 1) and torch.all(gap[1:] == 0)
    assert torch.all(out[0, 0, 44:] == 1) and torch.all(out[0, 1:, 44:] == 0)
    # All windows empty: one probe call to learn K, result all background.
    seen.clear()
    out = sliding_window(_counting(pointwise, seen), x, W(16, 0.5),
                         skip_empty=torch.zeros(48, 48, 16, dtype=bool))
    assert len(seen) == 1 and torch.all(out.argmax(1) == 0)


def test_importance_map_is_cached_gaussian():
    m = importance_map((8, 12, 16))
    assert m is importance_map((8, 12, 16))
    assert m.shape == (8, 12, 16) and float(m.min()) >= 1e-3
    x = torch.arange(12, dtype=torch.float64) - 5.5
    g = torch.exp(-0.5 * (x / 1.5) ** 2)
    ratio = m[3, :, 7].double() / m[3, 5, 7].double()
    expected = (g / g[5]).clamp(min=1e-3 / float(m[3, 5, 7]))
    torch.testing.assert_close(ratio, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("roi", [(96, 96, 96), (32, 32, 32), (24, 24, 16), (7, 64, 33)])
def test_importance_map_equals_monai(roi):
    pytest.importorskip("monai")
    from monai.data.utils import compute_importance_map

    theirs = compute_importance_map(roi, mode="gaussian", sigma_scale=0.125, device="cpu")
    torch.testing.assert_close(importance_map(roi), theirs, rtol=1e-6, atol=1e-7)


def test_window_starts_cover_with_overlap():
    for size in range(16, 130, 7):
        for overlap in (0.0, 0.25, 0.5, 0.9):
            s = window_starts(size, 16, overlap)
            assert s[0] == 0 and s[-1] == size - 16
            assert all(b - a <= 16 * (1 - overlap) + 0.5 for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("kwargs,match", [
    ({"overlap": 1.0}, "overlap"),
    ({"roi_size": (16, 0, 16)}, "roi_size"),
    ({"blend": "gausian"}, "did you mean 'gaussian'"),
    ({"batch_size": 0}, "batch_size"),
    ({"mirror_axes": (3,)}, "mirror_axes"),
    ({"skip_empty": torch.ones(3, 3, 3, dtype=torch.bool)}, "skip_empty"),
])
def test_argument_errors(pointwise, kwargs, match):
    settings = {"roi_size": 16, **kwargs}
    mask = settings.pop("skip_empty", None)
    with pytest.raises(UsageError, match=match):
        sliding_window(pointwise, torch.zeros(1, 2, 20, 20, 20), W(**settings), skip_empty=mask)


def test_predictor_output_checked():
    with pytest.raises(GeometryError, match="predictor output"):
        sliding_window(lambda t: t[..., ::2, :, :], torch.zeros(1, 1, 20, 20, 20), 16)
    with pytest.raises(UsageError, match="image"):
        sliding_window(lambda t: t, torch.zeros(20, 20, 20), 16)


def test_memory_estimate_counts_slab_not_full_volume():
    shape = (1, 1, 512, 512, 600)
    full = estimate_peak_memory(shape, 15, 96, 4, torch.float32, "probabilities")
    slab = estimate_peak_memory(shape, 15, 96, 4, torch.float32, "labels")
    assert full > 15 * 512 * 512 * 600 * 4
    assert slab < 8e9 and slab < full / 2
    # The slab holds 96 + 48 slices of 15 float32 channels.
    assert slab > 15 * 512 * 512 * 144 * 4


def test_argmax_channels_equals_torch_argmax_first_on_ties():
    from medseg.argmax import argmax_channels

    values = torch.randint(0, 3, (5, 7, 6, 4)).float()  # many ties
    before = values.clone()
    out = torch.empty(7, 6, 4, dtype=torch.uint8)
    assert torch.equal(argmax_channels(values, out), values.argmax(0).to(torch.uint8))
    divisor = torch.rand(7, 6, 4) + 0.5
    argmax_channels(values, out, divisor)
    assert torch.equal(out, (values / divisor).argmax(0).to(torch.uint8))
    assert torch.equal(values, before)  # the input is not written to
