"""Benchmark: an nnU-Net v2 model through medseg vs nnU-Net's own ``nnUNetPredictor`` (CPU).

One run, same weights, same input file: a 512 x 512 x 300 CT-like phantom at
0.8 x 0.8 x 1.5 mm (LPS, ``make_phantom``) predicted end to end (read, preprocess, sliding
window, back to the input grid, write) by

* ``medseg predict -m nnunet:FOLDER`` (:mod:`medseg.sources.nnunet`), and
* ``nnUNetPredictor.predict_from_files_sequential`` (nnunetv2, the oracle),

with mirroring (TTA) off and on. The model is a real nnU-Net model planned, preprocessed
and briefly trained by nnU-Net itself on phantoms of the same field of view at a coarser
spacing (``tests/nnunet_model.py``; cached in ``--cache``), so both predictors resample the
image down and the logits back up. Each prediction runs in its own subprocess with the same
torch thread count; its wall time and peak RSS (``ru_maxrss``) are the subprocess's own.
Printed per TTA setting: time and peak RSS of each, the ratios medseg / nnU-Net (targets:
time <= 0.7, peak RSS <= 0.5) and the share of voxels whose labels agree.

Run::

    python benchmarks/bench_nnunet.py [--shape 512 512 300] [--threads 2] [--cache DIR]

Needs nnunetv2 (the ``test`` extra). With ``--device cuda`` both run on the GPU with AMP
and the peak GPU memory is printed too.
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

ROOT = Path(__file__).resolve().parents[1]
TIME_TARGET, RSS_TARGET = 0.7, 0.5
#: The model's training phantoms: the bench image's field of view (410 x 410 x 450 mm) at
#: 6.4 x 6.4 x 12 mm, so nnU-Net plans that spacing (8x coarser in-plane than the input).
MODEL_SPACING = (6.4, 6.4, 12.0)
MODEL_SHAPE = (64, 64, 38)


def child_medseg(image: str, folder: str, out: str, tta: bool, device: str) -> dict:
    from medseg.cli import main

    code = main(["-q", "predict", "-m", f"nnunet:{folder}", "-i", image, "-o", out,
                 "--device", device, "--tta" if tta else "--no-tta"])
    if code:
        raise SystemExit(f"medseg predict failed ({code})")
    return {}


def child_nnunet(image: str, folder: str, out: str, tta: bool, device: str) -> dict:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta,
                                perform_everything_on_device=device != "cpu",
                                device=torch.device(device), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=None,
                                                   checkpoint_name="checkpoint_final.pth")
    target = Path(out)
    predictor.predict_from_files_sequential([[image]], [str(target.parent / "nnunet")], False,
                                            True, None)
    (target.parent / "nnunet.nii.gz").replace(target)
    return {}


def child(which: str, image: str, folder: str, out: str, tta: bool, device: str,
          threads: int) -> None:
    """One prediction; print its wall seconds, peak RSS and peak GPU memory as JSON."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    (child_medseg if which == "medseg" else child_nnunet)(image, folder, out, tta, device)
    seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB
    print(json.dumps({"seconds": seconds, "rss_gb": rss, "gpu_gb": gpu}))


def run_child(which: str, image: Path, folder: Path, out: Path, tta: bool,
              args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", which, str(image), str(folder), str(out),
           "--threads", str(args.threads), "--device", args.device]
    cmd += ["--tta"] if tta else []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "nnUNet_raw": "/nonexistent",
           "nnUNet_preprocessed": "/nonexistent", "nnUNet_results": "/nonexistent"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model(cache: Path) -> Path:
    """The trained nnU-Net model folder (built once into ``cache``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from nnunet_model import build_model, model_folder

    start = time.perf_counter()
    results = build_model(cache, spacing=MODEL_SPACING, shape=MODEL_SHAPE, folds=(0,),
                          iterations=100)
    print(f"model: {model_folder(results)} ({time.perf_counter() - start:.0f} s incl. cache)")
    return model_folder(results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path,
                        default=Path.home() / ".cache" / "medseg-bench" / "nnunet")
    parser.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=4, metavar=("WHICH", "IMAGE", "FOLDER", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, tta=args.tta, device=args.device, threads=args.threads)
        return 0

    from medseg.data.phantom import make_phantom
    from medseg.io import read_volume, write_volume

    folder = model(args.cache)
    case = make_phantom(tuple(args.shape), (0.8, 0.8, 1.5), orientation="LPS", seed=7)
    print(f"input {case.image.shape} at 0.8 x 0.8 x 1.5 mm; device {args.device}, "
          f"{args.threads} torch threads, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        image = write_volume(case.image, Path(tmp) / "ct_0000.nii.gz")
        print(f"{'TTA':<4} {'medseg s':>9} {'nnU-Net s':>10} {'ratio':>6}   {'medseg GB':>9} "
              f"{'nnU-Net GB':>10} {'ratio':>6}   agreement")
        for tta in (False, True):
            ours = run_child("medseg", image, folder, Path(tmp) / "medseg.nii.gz", tta, args)
            theirs = run_child("nnunet", image, folder, Path(tmp) / "nn.nii.gz", tta, args)
            a = read_volume(Path(tmp) / "medseg.nii.gz").array
            b = read_volume(Path(tmp) / "nn.nii.gz").array
            agree = float(np.mean(a == b))
            print(f"{'on' if tta else 'off':<4} {ours['seconds']:9.1f} {theirs['seconds']:10.1f} "
                  f"{ours['seconds'] / theirs['seconds']:6.2f}   {ours['rss_gb']:9.2f} "
                  f"{theirs['rss_gb']:10.2f} {ours['rss_gb'] / theirs['rss_gb']:6.2f}   "
                  f"{100 * agree:.4f} %")
            if ours["gpu_gb"] is not None:
                print(f"     peak GPU memory: medseg {ours['gpu_gb']:.2f} GB, nnU-Net "
                      f"{theirs['gpu_gb']:.2f} GB")
    print(f"targets: time ratio <= {TIME_TARGET}, peak RSS ratio <= {RSS_TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
