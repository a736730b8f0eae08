"""Benchmark: end-to-end ``predict`` of a CT-sized volume, time per stage and peak memory.

Two runs, each in its own subprocess (so that its peak RSS, read with
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end, is the prediction's
alone and not the phantom generator's):

1. **time split**: a 512 x 512 x 300 CT-like phantom (0.8 x 0.8 x 1.5 mm, LPS
   as DICOM-derived CT usually is, ``make_phantom``) written as ``.nii.gz``,
   predicted with a small ``unet3d`` checkpoint (random weights, 6 classes;
   preprocessing as in ``pipelines/``: reorient to RAS, resample to 1.5 x 1.5 x
   3 mm, CT window; roi 96 x 96 x 48, overlap 0.25): seconds for read,
   preprocess, network, invert, write;
2. **stitching memory**: 512 x 512 x 600 (the 300-slice phantom followed by its
   mirror image along z) with a tiny 15-class ``unet3d`` (same preprocessing,
   roi 128 x 128 x 64): peak RSS, target < 8 GB. The label map is reduced slab
   by slab (``sliding_window_argmax``), never as a full (15, x, y, z) array.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_predict.py [--shape 512 512 300] [--device cpu]
        [--amp] [--label-interp linear|nearest]

``--amp`` runs the network in mixed precision (bf16 on the CPU, bf16/fp16 on CUDA; see
``medseg.runtime``); the default is medseg's (fp32 on the CPU).
``--label-interp nearest`` brings labels back by nearest neighbour instead of
interpolating probabilities (``medseg.transforms.resample_argmax``). With these random
weights the predicted classes change from voxel to voxel, so every cell is a boundary:
the worst case for ``linear``, whose cost for a trained network's smooth output is a
fraction of this (about 1 s for 6 classes at 512 x 512 x 300).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RSS_TARGET_GB = 8.0
PREPROCESSING = {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 3.0],
                 "intensity": {"mode": "ct", "window": [-200, 300]}}


def save_model(path: Path, classes: int, roi: list[int], overlap: float, **net) -> Path:
    """A random-weight ``unet3d`` checkpoint with the benchmark's preprocessing."""
    from medseg import models
    from medseg.checkpoint import save_checkpoint

    from medseg.card import ModelCard, NetworkSpec, WindowSettings

    model = models.create("unet3d", 1, classes, seed=0, **net)
    card = ModelCard(NetworkSpec.of(model), PREPROCESSING,
                     {k: f"class_{k}" for k in range(1, classes)},
                     WindowSettings(tuple(roi), overlap))
    return save_checkpoint(path, model, card)


def child(image: str, checkpoint: str, out: str, device: str, amp: bool | None,
          label_interp: str) -> None:
    """Read -> predict -> write one case; print the stage times and peak RSS as JSON."""
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.io import read_volume, write_volume
    from medseg.runtime import Runtime

    t0 = time.perf_counter()
    volume = read_volume(image)
    read_s = time.perf_counter() - t0
    result = predict_case(checkpoint, volume, PredictOptions(label_interp=label_interp),
                          Runtime.resolve(device, amp))
    t0 = time.perf_counter()
    write_volume(result.labels, out)
    write_s = time.perf_counter() - t0
    same_affine = np.array_equal(result.labels.affine, volume.affine)
    if result.labels.shape != volume.shape or not same_affine:
        raise SystemExit("prediction is not on the input grid")
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"read": read_s, **result.timings_s, "write": write_s,
                      "peak_rss_gb": rss_kb / 1024**2,
                      "labels": np.bincount(result.labels.array.ravel()).tolist()}))


def run_child(image: Path, checkpoint: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(image), str(checkpoint), str(out),
           "--device", args.device, "--label-interp", args.label_interp]
    cmd += ["--amp"] if args.amp else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(title: str, shape, res: dict) -> None:
    stages = ["read", "preprocess", "network", "invert", "write"]
    total = sum(res[s] for s in stages)
    print(f"\n{title}: input {tuple(shape)}")
    for stage in stages:
        print(f"  {stage:<11} {res[stage]:8.2f} s  {100 * res[stage] / total:5.1f} %")
    print(f"  {'total':<11} {total:8.2f} s")
    print(f"  peak RSS    {res['peak_rss_gb']:8.2f} GB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", default=None,
                        help="mixed precision (bf16 on the CPU, fp16 on CUDA)")
    parser.add_argument("--label-interp", default="linear", choices=["linear", "nearest"])
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "CKPT", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, device=args.device, amp=args.amp, label_interp=args.label_interp)
        return 0

    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume
    from medseg.volume import Volume

    t0 = time.perf_counter()
    case = make_phantom(tuple(args.shape), (0.8, 0.8, 1.5), orientation="LPS")
    print(f"phantom {case.image.shape} made in {time.perf_counter() - t0:.1f} s; "
          f"device {args.device}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} cpus, amp {args.amp or 'default'}, labels {args.label_interp}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        image = write_volume(case.image, tmp_path / "ct.nii.gz")
        small = save_model(tmp_path / "unet_small.safetensors", 6, [96, 96, 48], 0.25,
                           depth=3, width=4, convs_per_stage=1)
        res = run_child(image, small, tmp_path / "pred.nii.gz", args)
        report("time split, unet3d depth 3 width 4, 6 classes, roi 96x96x48, overlap 0.25",
               case.image.shape, res)

        long = np.concatenate([case.image.array, case.image.array[:, :, ::-1]], axis=2)
        affine = case.image.affine
        del case
        long_image = write_volume(Volume(long, affine), tmp_path / "ct_long.nii.gz")
        shape_long = long.shape
        del long
        tiny = save_model(tmp_path / "unet_tiny15.safetensors", 15, [128, 128, 64], 0.25,
                          depth=2, width=2, convs_per_stage=1)
        res = run_child(long_image, tiny, tmp_path / "pred_long.nii.gz", args)
        report("stitching memory, tiny unet3d, 15 classes, roi 128x128x64, overlap 0.25",
               shape_long, res)
        verdict = "OK" if res["peak_rss_gb"] < RSS_TARGET_GB else "OVER TARGET"
        print(f"  target      < {RSS_TARGET_GB:.0f} GB peak RSS: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
