"""Sliding-window inference: medseg vs MONAI ``sliding_window_inference``, one run.

Prints, for a 160x160x128 phantom, roi 96^3, overlap 0.5, Gaussian blending:

* medseg / MONAI wall time (median of 3 interleaved runs each, same network,
  same windows) in fp32, and the argmax agreement;
* the stitching alone: both with a free predictor (a cached tensor), i.e. the
  part of the time that is the sliding window's own and not the network's;
* AMP: medseg's predictor with ``amp=True`` (fp16 on CUDA, bf16 on the CPU; see
  ``medseg.inference.precision``) against MONAI in fp32, and MONAI run under the
  same autocast, so the precision's share and the stitching's share are apart;
* ``skip_empty`` (body mask = HU > -500) on the centred phantom and on an
  off-centre "small patient in a large field of view" phantom: medseg lays its
  windows over the body's bounding box and skips windows without body, MONAI
  runs every window. Outside the body medseg's output is background by
  definition, so the agreement there says what the random network predicts in
  air, not how the two blend;
* peak RSS (measured in a subprocess) and the pre-flight estimate of the
  slab-wise argmax at 512x512x600 with 15 classes (1x1x1 conv predictor).

Usage: ``python benchmarks/bench_inference.py [--model auto|monai|medseg] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

SHAPE = (160, 160, 128)
ROI = (96, 96, 96)
OVERLAP = 0.5


def build_net(choice: str, device: str) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    if choice in ("auto", "medseg"):
        try:
            from medseg.models import create

            if choice == "medseg" or device != "cpu":
                return create("unet3d", 1, 6).eval().to(device), "medseg unet3d"
        except ImportError:
            if choice == "medseg":
                raise
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=6, channels=(16, 32, 64, 128),
               strides=(2, 2, 2))
    return net.eval().to(device), "MONAI UNet(16,32,64,128)"


def as_input(hu: np.ndarray, device: str) -> torch.Tensor:
    from medseg.transforms import ct_window

    return torch.from_numpy(ct_window(hu, [-200, 300])[None, None]).to(device)


def off_centre_phantom() -> np.ndarray:
    """A 64x64x128 phantom in the corner of a 160x160x128 field of air (body ~8% of voxels)."""
    from medseg.data.phantom import make_phantom

    small = make_phantom((64, 64, SHAPE[2]), (2.0, 2.0, 2.5), seed=1).image.array
    rng = np.random.default_rng(1)
    hu = np.clip(rng.normal(-1000, 20, SHAPE), -1024, None).astype(np.int16)
    hu[:64, :64, :] = small
    return hu


def timed(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(label: str, net, x: torch.Tensor, mask: torch.Tensor | None = None, runs: int = 3,
            amp: bool = False, monai_autocast: bool = False, reference: torch.Tensor | None = None,
            agreement: bool = True) -> torch.Tensor:
    """Time medseg's and MONAI's sliding window on ``x``; print the ratio; return MONAI's output.

    ``amp``: medseg runs ``net`` under ``Runtime.resolve(device, amp=True)``; ``monai_autocast``:
    MONAI runs under the same autocast. Agreement is against ``reference`` when given
    (not printed when ``agreement`` is False: the two do not compute the same thing).
    One warm-up run of each is not timed.
    """
    from monai.inferers import sliding_window_inference

    from medseg.card import WindowSettings
    from medseg.inference import sliding_window
    from medseg.inference.precision import make_predictor
    from medseg.runtime import Runtime

    device = x.device
    runtime = Runtime.resolve(device, amp=True)
    ours_net = make_predictor(net, runtime) if amp else net
    dtype = runtime.autocast_dtype if monai_autocast else None
    window = WindowSettings(ROI, OVERLAP, "gaussian", batch_size=4)

    def ours():
        return sliding_window(ours_net, x, window, skip_empty=mask)

    def theirs():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return sliding_window_inference(x, ROI, 4, net, overlap=OVERLAP, mode="gaussian",
                                            sigma_scale=0.125)

    t_ours, t_theirs = [], []
    with torch.inference_mode():
        ours(), theirs()  # warm-up: caches, allocator, oneDNN primitives
        for _ in range(runs):
            t, out_ours = timed(lambda: sync(ours(), device))
            t_ours.append(t)
            t, out_theirs = timed(lambda: sync(theirs(), device))
            t_theirs.append(t)
    ref = out_theirs if reference is None else reference
    agree = (out_ours.argmax(1) == ref.argmax(1)).float().mean().item()
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    body = "" if mask is None else f", body {mask.float().mean().item():.0%} of voxels"
    against = "" if reference is None else " with MONAI fp32"
    print(f"{label}{body}: medseg {a:.3f} s, MONAI {b:.3f} s, ratio {a / b:.2f}x "
          f"(runs medseg {[round(t, 2) for t in t_ours]}, "
          f"MONAI {[round(t, 2) for t in t_theirs]})"
          + (f"; argmax agreement {agree:.4%}{against}" if agreement else ""))
    return out_theirs


def sync(out: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def free_predictor(x: torch.Tensor, classes: int):
    """A predictor that costs nothing: the same cached (n, K, *ROI) tensor every call."""
    cache: dict[int, torch.Tensor] = {}

    def predict(batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]
        if n not in cache:
            cache[n] = torch.randn((n, classes) + ROI, device=x.device)
        return cache[n]

    return predict


def memory_child() -> None:
    """Slab-wise argmax at 512x512x600, 15 classes; prints JSON with peak RSS and estimate."""
    from medseg.card import WindowSettings
    from medseg.inference import estimate_peak_memory, sliding_window_argmax

    shape = (1, 1, 512, 512, 600)
    scale = torch.linspace(-1.0, 1.0, 15).view(1, 15, 1, 1, 1)
    bias = torch.linspace(0.5, -0.5, 15).view(1, 15, 1, 1, 1)

    def net(t: torch.Tensor) -> torch.Tensor:  # a 1x1x1 convolution 1 -> 15, written out
        return t * scale + bias

    x = torch.linspace(-1, 1, 600).expand(shape).contiguous()
    estimate = estimate_peak_memory(shape, 15, ROI, 4, torch.float32, "labels")
    t0 = time.perf_counter()
    labels = sliding_window_argmax(net, x, WindowSettings(ROI, OVERLAP, batch_size=4))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak, "estimate": estimate, "seconds": seconds,
                      "labels": list(labels.shape), "classes": int(labels.max()) + 1}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", choices=["auto", "monai", "medseg"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child()
        return
    from medseg.data.phantom import make_phantom

    net, name = build_net(args.model, args.device)
    from medseg.runtime import Runtime, cpu_has_native_bf16

    print(f"network: {name}; device {args.device}, torch threads {torch.get_num_threads()}, "
          f"native CPU bf16 {cpu_has_native_bf16()}; "
          f"volume {SHAPE}, roi {ROI}, overlap {OVERLAP}, gaussian, batch 4")
    if args.model == "auto" and name.startswith("MONAI"):
        print("(medseg unet3d is used on a GPU; on the CPU it is ~20x slower per window than "
              "this UNet, which would make the benchmark take hours)")
    hu = make_phantom(SHAPE, (2.0, 2.0, 2.5), seed=0).image.array
    x = as_input(hu, args.device)
    reference = compare("plain fp32", net, x)
    compare("stitching alone (free predictor)", free_predictor(x, 6), x, runs=5,
            agreement=False)
    amp = Runtime.resolve(args.device, amp=True).precision
    compare(f"AMP: medseg {amp}, MONAI fp32", net, x, amp=True, reference=reference)
    compare(f"AMP: both {amp}", net, x, amp=True, monai_autocast=True, reference=reference)
    body = torch.from_numpy(hu > -500).to(args.device)
    compare("skip_empty, centred phantom", net, x, body, agreement=False)
    hu = off_centre_phantom()
    compare("skip_empty, off-centre phantom", net, as_input(hu, args.device),
            torch.from_numpy(hu > -500).to(args.device), agreement=False)

    proc = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True,
                          text=True, check=True)
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    gb = 1e9
    print(f"slab-wise argmax 512x512x600, 15 classes, 1x1x1 conv: peak RSS "
          f"{mem['peak_rss'] / gb:.2f} GB, estimate {mem['estimate'] / gb:.2f} GB "
          f"(ratio {mem['peak_rss'] / mem['estimate']:.2f}), target < 8 GB, "
          f"{mem['seconds']:.1f} s")


if __name__ == "__main__":
    main()
