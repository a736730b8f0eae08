"""FLOP counts against hand calculation; the ``medseg models`` command."""

import torch

from medseg import models
from medseg.cli import main
from medseg.models.flops import count_flops, count_parameters


def test_conv_flops_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Conv3d(4, 1, 1))
    voxels = 6 * 5 * 4
    expected = 2 * voxels * (27 * 2 * 4 + 4 * 1)
    assert count_flops(net, (6, 5, 4), in_channels=2) == expected
    assert count_flops(net, (6, 5, 4), in_channels=2, batch=3) == 3 * expected


def test_unet_flops_scale_with_patch_and_parameters_by_hand():
    model = models.create("unet3d", 1, 2, depth=2, width=2, convs_per_stage=1)
    # conv 1->2 (27*2), down conv 2->4 (27*2*4), up 4->2 transposed 2^3 (8*4*2),
    # decoder conv 4->2 (27*4*2), head 2->2 (+2 bias); 3 instance norms with 2+4+2 channels x 2
    expected = 27 * 2 + 27 * 2 * 4 + 8 * 4 * 2 + 27 * 4 * 2 + 2 * 2 + 2 + 2 * (2 + 4 + 2)
    assert count_parameters(model) == expected
    small = count_flops(model, (8, 8, 8), 1)
    assert count_flops(model, (16, 16, 16), 1) == 8 * small


def test_cli_lists_every_model(capsys):
    assert main(["models", "--patch", "32,32,16"]) == 0
    out = capsys.readouterr().out
    for name in models.available():  # every model that has defaults (nnunet is built from plans)
        assert (name in out) == (not models.required_options(name))
    assert "GFLOPs" in out
