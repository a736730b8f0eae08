"""Forward + backward time of medseg's networks against MONAI's UNet and DynUNet.

One run measures, per network, on a (batch, 1, 96, 96, 96) patch with 6 classes:
parameters, forward GFLOPs per patch (FlopCounterMode: 2 x conv multiply-adds),
seconds per training step (forward, then backward of
``logits.float().mean()``; best of ``--iters`` round-robin steps), seconds per
patch, and time per GFLOP relative to MONAI DynUNet
(ratio <= 1.0: at least as efficient per FLOP as DynUNet).

On a GPU (``torch.cuda.is_available()``) the step runs under bf16 autocast with
channels_last_3d memory format and the achieved TFLOP/s (forward + backward
FLOPs counted once / time) is printed too.

    python benchmarks/bench_models.py [--patch 96] [--batch 2] [--iters 2] [--width 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from medseg import models
from medseg.models.flops import count_flops, count_parameters


def build(width: int, classes: int) -> dict[str, torch.nn.Module]:
    """medseg networks and MONAI peers of comparable parameter count to ``unet3d``."""
    from monai.networks.nets import DynUNet, UNet

    filters = [min(width * 2**i, 320) for i in range(5)]
    return {
        f"medseg unet3d (w{width})": models.create("unet3d", 1, classes, width=width, seed=0),
        "medseg deeplab3d": models.create("deeplab3d", 1, classes, seed=0),
        "medseg fcn3d": models.create("fcn3d", 1, classes, seed=0),
        f"MONAI DynUNet (f{width})": DynUNet(
            3, 1, classes, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2],
            upsample_kernel_size=[2] * 4, filters=filters, norm_name="instance",
        ),
        f"MONAI UNet (c{width})": UNet(
            3, 1, classes, channels=filters, strides=(2, 2, 2, 2), num_res_units=2,
            norm="instance",
        ),
    }


def one_step(model: torch.nn.Module, x: torch.Tensor, cuda: bool) -> float:
    """Seconds of one forward + backward step."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        out = model(x)
    out = out[0] if isinstance(out, list) else out
    out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=96, help="cubic patch side in voxels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--width", type=int, default=16, help="unet3d width = peers' first filters")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    patch = (args.patch,) * 3
    print(f"device: {torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{'bf16 autocast + channels_last_3d' if cuda else 'float32'}")
    print(f"patch {'x'.join(map(str, patch))}, batch {args.batch}, forward + backward, "
          f"best of {args.iters} round-robin steps after 1 warm-up each")
    header = f"{'network':<26} {'params':>11} {'GFLOPs':>8} {'s/step':>8} {'s/patch':>8} " \
             f"{'ms/GFLOP':>9} {'ratio':>6}"
    print(header + ("  TFLOP/s" if cuda else ""))
    networks = build(args.width, 6)
    x = torch.randn(args.batch, 1, *patch, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last_3d)
    counts = {}
    for name, model in networks.items():
        counts[name] = (
            count_parameters(model),
            count_flops(model, patch, 1) / 1e9,
            count_flops(model, patch, 1, batch=args.batch, backward=True) if cuda else 0,
        )
        model.to(device).train()
        if cuda:
            model.to(memory_format=torch.channels_last_3d)
        one_step(model, x, cuda)  # warm-up
    # Round robin, best of ``iters``: a load change on a shared machine hits every network.
    best = {name: float("inf") for name in networks}
    for _ in range(args.iters):
        for name, model in networks.items():
            best[name] = min(best[name], one_step(model, x, cuda))
    rows = [(name, *counts[name][:2], best[name], counts[name][2]) for name in networks]
    reference = next(r for r in rows if r[0].startswith("MONAI DynUNet"))
    ref_per_gflop = reference[3] / args.batch / reference[2]
    for name, params, gflops, seconds, fwd_bwd in rows:
        per_gflop = seconds / args.batch / gflops
        line = (f"{name:<26} {params:>11,} {gflops:>8.1f} {seconds:>8.2f} "
                f"{seconds / args.batch:>8.2f} {1e3 * per_gflop:>9.2f} "
                f"{per_gflop / ref_per_gflop:>6.3f}")
        if cuda:
            line += f"  {fwd_bwd / seconds / 1e12:>7.1f}"
        print(line)
    print("ratio = (time per patch per forward GFLOP) / DynUNet's; <= 1.0 is the target for unet3d")


if __name__ == "__main__":
    main()
