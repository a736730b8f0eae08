"""Every model and upsampling mode: output size = input size (odd sizes), gradients, seeds."""

import json

import pytest
import torch

from medseg import losses, models
from medseg.errors import UsageError

ODD = (97, 80, 33)

CONFIGS = [
    ("unet3d", {"depth": 3, "width": 4, "upsample": "transposed"}),
    ("unet3d", {"depth": 3, "width": 4, "upsample": "trilinear"}),
    ("unet3d", {"depth": 3, "width": 4, "upsample": "nearest"}),
    ("unet3d", {"depth": 3, "width": 4, "upsample": "unpool"}),
    ("unet3d", {"depth": 4, "width": 2, "pool": [[2, 2, 1], [2, 2, 1], [2, 2, 2]], "norm": "group"}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1, "output_stride": 16, "separable": True,
                   "decoder": False, "norm": "batch", "act": "gelu"}),
    ("fcn3d", {"width": 2, "convs_per_stage": 1, "variant": "8s"}),
    ("fcn3d", {"width": 2, "convs_per_stage": 1, "variant": "16s", "upsample": "trilinear"}),
    ("fcn3d", {"width": 2, "convs_per_stage": 1, "variant": "32s", "upsample": "nearest"}),
]


def test_available():
    assert models.available() == ["unet3d", "deeplab3d", "fcn3d", "nnunet"]
    assert [n for n in models.available() if models.required_options(n)] == ["nnunet"]
    assert models.required_options("nnunet") == ["architecture"]


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=lambda v: str(v))
def test_odd_size_round_trip_and_gradients(name, kwargs):
    model = models.create(name, 2, 3, seed=0, **kwargs)
    x = torch.randn(1, 2, *ODD)
    target = torch.randint(0, 3, (1, *ODD))
    out = model(x)
    assert out.shape == (1, 3, *ODD)
    losses.create("ce")(out, target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_deep_supervision_outputs():
    model = models.create("unet3d", 1, 3, depth=4, width=2, deep_supervision=True, ds_levels=2,
                          pool=[2, 2, 1])
    x = torch.randn(1, 1, 33, 20, 9)
    outs = model(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 33, 20, 9), (1, 3, 17, 10, 9), (1, 3, 9, 5, 9)]
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        single = model(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, 33, 20, 9)


@pytest.mark.parametrize("name", ["unet3d", "deeplab3d", "fcn3d"])
def test_same_seed_same_weights_and_config_rebuilds(name):
    a = models.create(name, 1, 4, seed=7, width=2)
    b = models.create(name, 1, 4, seed=7, width=2)
    c = models.create(name, 1, 4, seed=8, width=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    config = json.loads(json.dumps(a.medseg_config))
    assert config["name"] == name and config["in_channels"] == 1 and config["out_channels"] == 4
    rebuilt = models.create(**config)
    assert rebuilt.medseg_config == a.medseg_config
    assert all(torch.equal(rebuilt.state_dict()[k], sa[k]) for k in sa)  # seed is in the config


def test_defaults_in_config_and_resolved_by_the_model():
    """The config holds the bound defaults; the model resolves the derived ones (None)."""
    unet = models.create("unet3d", 1, 2)
    config = unet.medseg_config
    assert config["depth"] == 5 and config["width"] == 32 and config["norm"] == "instance"
    assert config["upsample"] == "transposed" and config["downsample"] is None
    assert config["pool"] == 2 and unet.pools == [(2, 2, 2)] * 4
    assert len(unet.pooling) == 0  # downsample None -> "conv": strided convolutions
    unpool = models.create("unet3d", 1, 2, depth=3, width=2, upsample="unpool")
    assert unpool.medseg_config["downsample"] is None and len(unpool.pooling) == 2  # maxpool
    dl = models.create("deeplab3d", 1, 2, width=2)
    assert dl.medseg_config["output_stride"] == 8 and dl.medseg_config["rates"] is None
    assert dl.medseg_config["decoder"] is True
    assert [b.conv.dilation for b in dl.aspp.branches[1:]] == [(2,) * 3, (4,) * 3, (6,) * 3]
    dl16 = models.create("deeplab3d", 1, 2, width=2, output_stride=16)
    assert [b.conv.dilation for b in dl16.aspp.branches[1:]] == [(1,) * 3, (2,) * 3, (3,) * 3]
    assert models.create("fcn3d", 1, 2).medseg_config["variant"] == "8s"


def test_unpool_in_unet_uses_encoder_indices():
    model = models.create("unet3d", 1, 2, depth=2, width=2, upsample="unpool", seed=0)
    x = torch.randn(1, 1, 8, 8, 6)
    seen = {}
    model.upsamplers[0].register_forward_hook(lambda m, i, o: seen.setdefault("up", o))
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.setdefault("skip", o))
    with torch.no_grad():
        model(x)
    _, idx = torch.nn.functional.max_pool3d(seen["skip"], 2, 2, return_indices=True)
    flat = seen["up"].flatten(2)
    chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, idx.flatten(2), True)
    assert torch.all(flat[~chosen] == 0)
    assert torch.all(flat[chosen] != 0)


def test_bad_arguments_name_parameter_and_suggest():
    with pytest.raises(UsageError, match="did you mean 'unet3d'"):
        models.create("unet", 1, 2)
    with pytest.raises(UsageError, match="did you mean 'upsample'"):
        models.create("unet3d", 1, 2, upsampling="nearest")
    with pytest.raises(UsageError, match="did you mean 'trilinear'"):
        models.create("unet3d", 1, 2, upsample="trilinaer")
    with pytest.raises(UsageError, match="output_stride must be 8 or 16, got 32"):
        models.create("deeplab3d", 1, 2, output_stride=32)
    with pytest.raises(UsageError, match="did you mean '16s'"):
        models.create("fcn3d", 1, 2, variant="16")
    with pytest.raises(UsageError, match="depth - 1 = 4"):
        models.create("unet3d", 1, 2, pool=[[2, 2, 1]])
    with pytest.raises(UsageError, match="needs downsample='maxpool'"):
        models.create("unet3d", 1, 2, upsample="unpool", downsample="conv")
    with pytest.raises(UsageError, match="width must be an int >= 1, got 0"):
        models.create("fcn3d", 1, 2, width=0)
