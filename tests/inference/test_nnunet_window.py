"""medseg's nnU-Net window arithmetic (blend="nnunet") against nnunetv2's own predictor.

The oracle is nnunetv2's ``nnUNetPredictor.predict_sliding_window_return_logits`` on the
same network and array: medseg runs it in the window frame (nnU-Net's axes reversed)
through :class:`medseg.models.nnunet.WindowFrameNetwork`; the logits must agree bit for bit
(float16 accumulation in the same order), and a transposed or mirrored run must not.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from medseg.card import WindowSettings
from medseg.inference.sliding_window import sliding_window
from medseg.inference.windows import even_window_starts, nnunet_importance_map
from medseg.models.nnunet import WindowFrameNetwork

window_prediction = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
predict_raw = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")


@pytest.mark.parametrize("patch", [(16, 20, 12), (7, 9, 10), (32, 24)])
def test_gaussian_is_nnunets_bit_for_bit(patch):
    ours = nnunet_importance_map(tuple(reversed(patch)) + ((1,) if len(patch) == 2 else ()))
    theirs = window_prediction.compute_gaussian(patch, 1 / 8, 10, device=torch.device("cpu"))
    expected = theirs.permute(*reversed(range(theirs.ndim)))
    assert ours.dtype == torch.float16
    assert torch.equal(ours.reshape(expected.shape), expected)


@pytest.mark.parametrize("size,roi", [(110, 64, ), (64, 64), (65, 64), (200, 48), (97, 16),
                                      (30, 7)])
def test_window_starts_are_nnunets(size, roi):
    theirs = window_prediction.compute_steps_for_sliding_window((size,), (roi,), 0.5)[0]
    assert even_window_starts(size, roi, 0.5) == theirs


def _unet(dims: int, in_channels: int = 1, classes: int = 3) -> torch.nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    norm = torch.nn.InstanceNorm3d if dims == 3 else torch.nn.InstanceNorm2d
    torch.manual_seed(0)
    net = PlainConvUNet(in_channels, 2, (4, 8), conv, 3, (1, 2), (1, 1), classes, (1,), False,
                        norm, {"eps": 1e-5, "affine": True}, None, None, torch.nn.LeakyReLU,
                        {"inplace": True}, deep_supervision=False)
    with torch.no_grad():  # trained-looking logits: spread the last layer
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


def _nnunet_logits(net, data: torch.Tensor, patch, mirror_axes) -> torch.Tensor:
    """nnunetv2's predictor on ``data`` (C, a0, a1, a2), CPU, the given mirroring."""
    predictor = predict_raw.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True,
                                            use_mirroring=bool(mirror_axes),
                                            perform_everything_on_device=False,
                                            device=torch.device("cpu"), verbose=False,
                                            allow_tqdm=False)
    predictor.network = net
    predictor.configuration_manager = types.SimpleNamespace(patch_size=list(patch))
    predictor.label_manager = types.SimpleNamespace(num_segmentation_heads=3)
    predictor.allowed_mirroring_axes = mirror_axes
    return predictor.predict_sliding_window_return_logits(data)


def _medseg_logits(net, data: torch.Tensor, patch, mirror_axes, dims=3) -> torch.Tensor:
    roi = tuple(reversed(patch)) + ((1,) if dims == 2 else ())
    axes = tuple(2 - a - (1 if dims == 2 else 0) for a in mirror_axes)
    window = WindowSettings(roi, 0.5, "nnunet", 1, axes)
    image = data.permute(0, 3, 2, 1)[None]  # the window frame: nnU-Net's axes reversed
    out = sliding_window(WindowFrameNetwork(net, dims), image, window)[0]
    return out.permute(0, 3, 2, 1)


@pytest.mark.parametrize("mirror_axes", [(), (0, 1, 2), (1, 2)])
def test_3d_logits_equal_nnunets(mirror_axes):
    torch.set_num_threads(1)
    net = _unet(3)
    data = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 21, 30, 26))
                            .astype(np.float32))
    patch = (12, 16, 16)  # a0 < patch? no; a0 = 21 > 12: several windows per axis
    theirs = _nnunet_logits(net, data, patch, mirror_axes)
    ours = _medseg_logits(net, data, patch, mirror_axes)
    assert ours.dtype == theirs.dtype == torch.float16
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    # a transposed or mirrored result is not nnU-Net's
    assert not torch.equal(ours.flip(1), theirs)
    assert not torch.equal(_medseg_logits(net, data.transpose(2, 3).contiguous(), patch[:1]
                                          + patch[1:][::-1], mirror_axes).transpose(2, 3),
                           theirs)


def test_image_smaller_than_patch_is_padded_as_nnunet_does():
    torch.set_num_threads(1)
    net = _unet(3)
    data = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 9, 30, 13))
                            .astype(np.float32))
    patch = (12, 16, 16)
    assert torch.equal(_medseg_logits(net, data, patch, (0, 1, 2)),
                       _nnunet_logits(net, data, patch, (0, 1, 2)))


@pytest.mark.parametrize("mirror_axes", [(), (0, 1)])
def test_2d_logits_equal_nnunets(mirror_axes):
    torch.set_num_threads(1)
    net = _unet(2)
    data = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 5, 30, 26))
                            .astype(np.float32))
    patch = (16, 16)
    theirs = _nnunet_logits(net, data, patch, mirror_axes)
    ours = _medseg_logits(net, data, patch, mirror_axes, dims=2)
    assert torch.equal(ours, theirs)
