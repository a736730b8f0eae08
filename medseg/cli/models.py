"""``medseg models``: list the networks with parameter count and GFLOPs per patch."""

from __future__ import annotations

import argparse
import logging

HELP = "list the networks with their parameters and GFLOPs per patch"
log = logging.getLogger(__name__)


def _patch(text: str) -> tuple[int, int, int]:
    parts = text.replace("x", ",").split(",")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch must be x,y,z voxels, e.g. 96,96,96; got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 3
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"patch must be x,y,z voxels, e.g. 96,96,96; got {text!r}")
    return sizes  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patch", type=_patch, default=(96, 96, 96),
                        help="patch size x,y,z in voxels (default 96,96,96)")
    parser.add_argument("--in-channels", type=int, default=1, help="image channels (default 1)")
    parser.add_argument("--out-channels", type=int, default=6,
                        help="classes incl. background (default 6)")


def run(args: argparse.Namespace) -> int:
    from medseg import models
    from medseg.models.flops import count_flops, count_parameters

    patch = "x".join(map(str, args.patch))
    print(f"{'model':<10} {'parameters':>12} {'GFLOPs/patch':>13}  defaults (patch {patch}, "
          "FLOPs = 2 x conv multiply-adds, FlopCounterMode)")
    for name in models.available():
        if models.required_options(name):  # built from a description (nnunet), no defaults
            continue
        model = models.create(name, args.in_channels, args.out_channels)
        flops = count_flops(model, args.patch, args.in_channels)
        options = {k: v for k, v in model.medseg_config.items()
                   if k not in ("name", "in_channels", "out_channels")}
        summary = ", ".join(f"{k}={v}" for k, v in options.items() if k in _SHOWN)
        print(f"{name:<10} {count_parameters(model):>12,} {flops / 1e9:>13.1f}  {summary}")
    return 0


_SHOWN = ("depth", "width", "norm", "upsample", "output_stride", "rates", "decoder", "variant")
