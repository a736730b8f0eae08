"""``medseg_config`` is read from the constructor signature; registered models round-trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medseg import models
from medseg.card import ModelCard, NetworkSpec, WindowSettings
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.errors import UsageError
from medseg.models.fcn3d import FCN3d

# (name, kwargs, the medseg_config medseg 0.1 wrote with its hand-copied ``hparams``
# dicts for create(name, 1, 3, **kwargs): the ``model`` entry of existing checkpoints).
OLD_CONFIGS = [
    ("unet3d", {"depth": 3, "width": 2},
     {"name": "unet3d", "in_channels": 1, "out_channels": 3, "depth": 3, "width": 2,
      "max_width": 320, "norm": "instance", "act": "leakyrelu", "upsample": "transposed",
      "downsample": "conv", "pool": [[2, 2, 2], [2, 2, 2]], "convs_per_stage": 2,
      "deep_supervision": False, "ds_levels": 2}),
    ("unet3d", {"depth": 3, "width": 2, "upsample": "unpool", "pool": [[2, 2, 1], [2, 2, 2]],
                "deep_supervision": True, "ds_levels": 4},
     {"name": "unet3d", "in_channels": 1, "out_channels": 3, "depth": 3, "width": 2,
      "max_width": 320, "norm": "instance", "act": "leakyrelu", "upsample": "unpool",
      "downsample": "maxpool", "pool": [[2, 2, 1], [2, 2, 2]], "convs_per_stage": 2,
      "deep_supervision": True, "ds_levels": 1}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1},
     {"name": "deeplab3d", "in_channels": 1, "out_channels": 3, "width": 2, "output_stride": 8,
      "rates": [2, 4, 6], "aspp_channels": 8, "low_level_channels": 2, "blocks_per_stage": 1,
      "separable": False, "decoder": True, "norm": "instance", "act": "relu"}),
    ("deeplab3d", {"width": 2, "blocks_per_stage": 1, "output_stride": 16},
     {"name": "deeplab3d", "in_channels": 1, "out_channels": 3, "width": 2, "output_stride": 16,
      "rates": [1, 2, 3], "aspp_channels": 8, "low_level_channels": 2, "blocks_per_stage": 1,
      "separable": False, "decoder": True, "norm": "instance", "act": "relu"}),
    ("fcn3d", {"width": 2, "convs_per_stage": 1, "variant": "16s"},
     {"name": "fcn3d", "in_channels": 1, "out_channels": 3, "variant": "16s", "width": 2,
      "convs_per_stage": 1, "upsample": "transposed", "norm": "instance", "act": "relu"}),
]

#: Constructor arguments added since OLD_CONFIGS were written (recorded at their defaults).
NEW_KEYS = {"unet3d": ["kernel"]}


def card_of(net) -> ModelCard:
    """A card for ``net``: its network spec plus minimal preprocessing and window."""
    return ModelCard(NetworkSpec.of(net), {}, {1: "liver", 2: "spleen"},
                     WindowSettings((16, 16, 16), 0.5))


@pytest.mark.parametrize(("name", "kwargs", "old"), OLD_CONFIGS, ids=lambda v: str(v)[:40])
def test_config_keys_as_before_and_old_configs_rebuild(name, kwargs, old):
    new = models.create(name, 1, 3, seed=0, **kwargs)
    assert list(new.medseg_config) == [*old, *NEW_KEYS.get(name, []), "seed"]
    rebuilt = models.create(**old, seed=0)  # an existing checkpoint's model entry
    new_state, old_state = new.state_dict(), rebuilt.state_dict()
    assert list(old_state) == list(new_state)
    assert all(torch.equal(old_state[k], new_state[k]) for k in new_state)
    x = torch.randn(1, 1, 20, 17, 9)  # > output_stride 16 voxels on an axis (instance norm)
    new.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), new(x))


def test_config_holds_bound_values_with_defaults_applied():
    net = models.create("unet3d", 2, 4, depth=3, width=2, pool=((2, 2, 1), (2, 2, 2)))
    assert net.medseg_config == {
        "name": "unet3d", "in_channels": 2, "out_channels": 4, "depth": 3, "width": 2,
        "max_width": 320, "norm": "instance", "act": "leakyrelu", "upsample": "transposed",
        "downsample": None, "pool": [[2, 2, 1], [2, 2, 2]], "convs_per_stage": 2,
        "deep_supervision": False, "ds_levels": 2, "kernel": 3,
    }
    assert json.loads(json.dumps(net.medseg_config)) == net.medseg_config


class ScaledFCN(FCN3d):
    """FCN-32s plus two options FCN3d lacks: ``extra_convs`` 1x1x1 logit convs, ``scale``."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 2,
                 extra_convs: int = 0, scale: float = 1.0) -> None:
        super().__init__(in_channels, out_channels, "32s", width, convs_per_stage=1)
        self.extra = nn.Sequential(
            *(nn.Conv3d(out_channels, out_channels, 1) for _ in range(extra_convs))
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra(super().forward(x)) * self.scale


@pytest.fixture
def scaled_fcn():
    models.register("scaled_fcn", ScaledFCN)
    yield "scaled_fcn"
    models.unregister("scaled_fcn")


def test_new_constructor_argument_round_trips_through_a_checkpoint(scaled_fcn, tmp_path):
    net = models.create(scaled_fcn, 1, 3, seed=3, extra_convs=2, scale=0.25)
    assert net.medseg_config == {
        "name": "scaled_fcn", "in_channels": 1, "out_channels": 3, "width": 2,
        "extra_convs": 2, "scale": 0.25, "seed": 3,
    }
    path = save_checkpoint(tmp_path / "scaled.safetensors", net, card_of(net))
    rebuilt = load_checkpoint(path).build_model()
    assert isinstance(rebuilt, ScaledFCN)
    assert rebuilt.medseg_config == net.medseg_config
    assert len(rebuilt.extra) == 2 and rebuilt.scale == 0.25
    state = net.state_dict()
    assert all(torch.equal(rebuilt.state_dict()[k], state[k]) for k in state)
    x = torch.randn(1, 1, 13, 10, 7)
    net.eval()
    with torch.no_grad():
        out = net(x)
        assert torch.equal(rebuilt(x), out)
        # the scale really came back: the same weights at scale 1 give 4x the logits
        plain = models.create(scaled_fcn, 1, 3, extra_convs=2)
        plain.load_state_dict(state)
        plain.eval()
        assert torch.allclose(plain(x) * 0.25, out, atol=1e-6)


def test_value_json_cannot_store_names_model_and_parameter(scaled_fcn):
    with pytest.raises(UsageError, match=r"model 'scaled_fcn' option scale=tensor\(0.5000\)"):
        models.create(scaled_fcn, 1, 2, scale=torch.tensor(0.5))
    with pytest.raises(UsageError, match="option scale=nan"):
        models.create(scaled_fcn, 1, 2, scale=float("nan"))


def test_available_lists_registered_and_typos_suggest_them(scaled_fcn):
    assert models.available() == ["unet3d", "deeplab3d", "fcn3d", "nnunet", "scaled_fcn"]
    with pytest.raises(UsageError, match="did you mean 'scaled_fcn'"):
        models.create("scaled_fc", 1, 2)
    with pytest.raises(UsageError, match="did you mean 'extra_convs'"):
        models.create(scaled_fcn, 1, 2, extra_conv=1)


class _Kwargs(FCN3d):
    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, **kwargs)


class _Seeded(FCN3d):
    def __init__(self, in_channels: int, out_channels: int, seed: int = 0) -> None:
        super().__init__(in_channels, out_channels)


class _NoChannels(nn.Module):
    def __init__(self, channels: int = 1) -> None:
        super().__init__()


@pytest.mark.parametrize(("cls", "message"), [
    (_Kwargs, r"parameter \*\*kwargs hides options from medseg_config"),
    (_Seeded, "parameter 'seed' clashes with the medseg_config key 'seed'"),
    (_NoChannels, r"must take \(in_channels, out_channels, ...\), got \(channels\)"),
    (int, "must be a torch.nn.Module subclass"),
])
def test_register_refuses_what_medseg_config_cannot_record(cls, message):
    with pytest.raises(UsageError, match=message):
        models.register("odd", cls)
    assert "odd" not in models.available()


def test_register_refuses_taken_names_and_builtins_stay(scaled_fcn):
    with pytest.raises(UsageError, match="'unet3d' is already registered"):
        models.register("unet3d", ScaledFCN)
    with pytest.raises(UsageError, match="'scaled_fcn' is already registered"):
        models.register(scaled_fcn, ScaledFCN)
    with pytest.raises(UsageError, match="'fcn3d' is built in"):
        models.unregister("fcn3d")


def test_build_makes_the_network_of_a_card_spec_with_its_seeded_weights():
    net = models.create("fcn3d", 1, 3, seed=5, variant="16s", width=2)
    spec = NetworkSpec.of(net)
    again = models.build(spec)
    assert type(again) is type(net) and again.medseg_config == net.medseg_config
    state, again_state = net.state_dict(), again.state_dict()
    assert list(again_state) == list(state)
    assert all(torch.equal(state[k], again_state[k]) for k in state)
    with pytest.raises(UsageError, match="unet3d"):
        models.build(NetworkSpec("unet3", 1, 2))
