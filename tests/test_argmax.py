"""One label-dtype rule: uint8 while every label fits (K <= 256), uint16 up to 65536."""

import numpy as np
import pytest
import torch

from medseg.argmax import argmax_channels, argmax_labels, label_dtype, torch_label_dtype
from medseg.errors import UsageError
from medseg.card import WindowSettings
from medseg.inference import sliding_window_argmax


@pytest.mark.parametrize("k,dtype", [(1, np.uint8), (2, np.uint8), (255, np.uint8),
                                     (256, np.uint8), (257, np.uint16), (65536, np.uint16)])
def test_label_dtype_holds_every_label(k, dtype):
    assert label_dtype(k) == dtype
    assert np.iinfo(label_dtype(k)).max >= k - 1  # the top label fits
    assert torch_label_dtype(k) == {np.uint8: torch.uint8, np.uint16: torch.uint16}[dtype]


@pytest.mark.parametrize("k", [0, 65537])
def test_label_dtype_refuses_counts_without_a_dtype(k):
    with pytest.raises(UsageError, match=rf"num_classes must be 1..65536 .*got {k}"):
        label_dtype(k)


@pytest.mark.parametrize("k,dtype", [(256, np.uint8), (257, np.uint16)])
def test_numpy_and_torch_paths_agree_at_the_threshold(k, dtype):
    """sliding_window_argmax (torch, slab-wise) and argmax_labels (NumPy) on the same
    scores: same dtype, same values, and the top label k - 1 survives (no wrap)."""
    rng = np.random.default_rng(k)
    scores = rng.random((1, k, 9, 7, 6)).astype(np.float32)
    scores[0, k - 1, :4] += 2.0  # the top class wins in part of the volume
    scores[0, 1, 6:] += 2.0
    image = torch.from_numpy(scores)
    labels_t = sliding_window_argmax(lambda x: x, image, WindowSettings((9, 7, 6), 0.0))[0]
    labels_np = argmax_labels(scores[0])
    assert labels_t.dtype == torch_label_dtype(k) and labels_np.dtype == dtype
    assert labels_t.numpy().dtype == dtype
    np.testing.assert_array_equal(labels_t.numpy(), labels_np)
    np.testing.assert_array_equal(labels_np, scores[0].argmax(axis=0))
    assert int(labels_np.max()) == k - 1


def test_argmax_channels_into_uint16():
    """uint16 has no CPU masked_fill_: computed wide, copied in; same as torch.argmax."""
    values = torch.rand(300, 5, 4, 3)
    values[299, 0] += 1.0
    out = torch.empty(5, 4, 3, dtype=torch.uint16)
    assert argmax_channels(values, out) is out
    assert torch.equal(out.to(torch.int64), values.argmax(0))
    view = torch.zeros(5, 4, 6, dtype=torch.uint16)[..., 1:4]  # a strided slab, as in the sink
    argmax_channels(values, view)
    assert torch.equal(view.to(torch.int64), values.argmax(0))
