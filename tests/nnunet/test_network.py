"""medseg.models.nnunet_network: the plans' network equals the one nnU-Net builds, imports allow-listed."""

from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch

from medseg.errors import CheckpointError
from medseg.models.nnunet_network import architecture_of, build_network
from nnunet.nnunet_tiny import (ARCHITECTURE, CONFIGURATION, CONFIGURATION_2D,
                                      old_style_configuration, plans)

plans_handler = pytest.importorskip("nnunetv2.utilities.plans_handling.plans_handler")
trainer_module = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
get_network_from_plans = pytest.importorskip(
    "nnunetv2.utilities.get_network_from_plans").get_network_from_plans

def nnunet_network(plans_: dict, configuration: str, in_channels: int, out_channels: int):
    """The network nnUNetPredictor builds: the trainer's build_network_architecture."""
    manager = plans_handler.PlansManager(plans_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nnU-Net warns about old-style plans
        config_manager = manager.get_configuration(configuration)
    network = trainer_module.nnUNetTrainer.build_network_architecture(
        manager, config_manager, in_channels, out_channels, enable_deep_supervision=False)
    return network.eval()


def assert_same_network(ours: torch.nn.Module, theirs: torch.nn.Module, shape) -> None:
    """Same parameter names and shapes; with the same weights, bitwise the same output."""
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    ours.load_state_dict(theirs.state_dict())
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=generator)
    with torch.no_grad():
        expected, actual = theirs(x), ours(x)
    assert isinstance(actual, torch.Tensor)  # deep supervision off: one output
    assert actual.shape == (shape[0], 3, *shape[2:])
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("configuration, shape", [
    (CONFIGURATION, (2, 1, 16, 32, 32)), (CONFIGURATION_2D, (2, 1, 32, 32))],
    ids=["3d_fullres", "2d"])
def test_the_network_equals_nnunets_on_the_same_weights(configuration, shape):
    plans_ = plans(configuration)
    ours = build_network(plans_["configurations"]["3d_fullres"], 1, 3)
    assert not ours.training
    assert_same_network(ours, nnunet_network(plans_, "3d_fullres", 1, 3), shape)


def test_two_input_channels_and_more_outputs():
    plans_ = plans()
    ours = build_network(plans_["configurations"]["3d_fullres"], 2, 5)
    theirs = nnunet_network(plans_, "3d_fullres", 2, 5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(1, 2, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert ours(x).shape == (1, 5, 16, 32, 32)


def test_old_style_plans_build_the_same_network_as_their_new_style_twin():
    old = old_style_configuration()
    assert architecture_of(old) == ARCHITECTURE
    new_network = build_network(CONFIGURATION, 1, 3)
    old_network = build_network(old, 1, 3)
    assert_same_network(old_network, new_network, (1, 1, 16, 32, 32))
    # and the same as nnU-Net's own reading of the old-style plans
    assert_same_network(build_network(old, 1, 3),
                        nnunet_network(plans(old), "3d_fullres", 1, 3), (1, 1, 16, 32, 32))


def test_old_style_residual_encoder_unet_is_the_one_nnunet_finds():
    """nnU-Net maps it to ...architectures.residual_unet.ResidualEncoderUNet, which
    dynamic-network-architectures 0.4 no longer has, then searches the package by class name
    (a search that here dies importing torchvision): the oracle builds nnU-Net's mapped
    arguments with the class that search is after."""
    old = {**old_style_configuration(), "UNet_class_name": "ResidualEncoderUNet"}
    architecture = architecture_of(old)
    assert architecture["network_class_name"] == \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    with pytest.warns(UserWarning, match="old nnU-Net plans format"):
        mapped = plans_handler.ConfigurationManager(copy.deepcopy(old))
    assert mapped.network_arch_init_kwargs == architecture["arch_kwargs"]
    assert mapped.network_arch_init_kwargs_req_import == architecture["_kw_requires_import"]
    theirs = get_network_from_plans(architecture["network_class_name"],
                                    mapped.network_arch_init_kwargs,
                                    mapped.network_arch_init_kwargs_req_import, 1, 3,
                                    deep_supervision=False).eval()
    assert_same_network(build_network(old, 1, 3), theirs, (1, 1, 16, 32, 32))


def test_a_moved_dna_class_is_found_by_name():
    config = copy.deepcopy(CONFIGURATION)
    config["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.old_place.PlainConvUNet"
    assert_same_network(build_network(config, 1, 3), build_network(CONFIGURATION, 1, 3),
                        (1, 1, 16, 32, 32))


def _refusal(config, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        build_network(config, 1, 3, source="plans.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("plans.json: ")
    return str(info.value)


def test_a_class_outside_the_allow_list_is_refused_and_not_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "medseg_test_payload.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("os.system", "medseg_test_payload.Net"):
        config = copy.deepcopy(CONFIGURATION)
        config["architecture"]["network_class_name"] = name
        _refusal(config, f"network_class_name is '{name}': medseg imports network classes "
                         "only from dynamic_network_architectures")
    assert not marker.exists() and "medseg_test_payload" not in sys.modules
    config = copy.deepcopy(CONFIGURATION)
    config["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    _refusal(config, r"arch_kwargs\['nonlin'\] is 'os.system'")


def test_an_allowed_prefix_cannot_reach_other_objects():
    for name, what in [("torch.nn.modules.module.torch.load", "function torch.serialization"),
                       ("torch.nn.modules.module.OrderedDict", "type collections.OrderedDict"),
                       ("torch.nn.functional.relu", "function torch.nn.functional.relu"),
                       ("dynamic_network_architectures.nothing.Here", "nothing")]:
        config = copy.deepcopy(CONFIGURATION)
        config["architecture"]["network_class_name"] = name
        _refusal(config, f"which names (the )?{what}")


def test_unknown_descriptions_and_bad_arguments_are_refused():
    config = {k: v for k, v in CONFIGURATION.items() if k != "architecture"}
    _refusal(config, "unknown plans format")
    _refusal({**old_style_configuration(), "UNet_class_name": "MyUNet"}, "'MyUNet'")
    old = old_style_configuration()
    del old["conv_kernel_sizes"]
    _refusal(old, "lacks conv_kernel_sizes")
    config = copy.deepcopy(CONFIGURATION)
    config["architecture"]["arch_kwargs"]["n_stages"] = 5
    _refusal(config, "PlainConvUNet refuses the plans' arch_kwargs")
