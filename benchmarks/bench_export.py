"""Benchmark: CPU predict with each backend and the exported runner against torch fp32.

One phantom CT (``make_phantom``, LPS, 0.8 x 0.8 x 1.5 mm; default 384 x 384 x 200 as in
``bench_predict.py``) and one random-weight ``unet3d`` checkpoint (6 classes, reorient to
RAS, resample to 1.5 x 1.5 x 3 mm, CT window, roi 96 x 96 x 48, overlap 0.25), each run in
its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``medseg predict --backend torch`` (fp32): the reference;
* ``medseg predict --backend onnxruntime`` and ``--backend auto``;
* the exported runner (``medseg export``; ``python DIR/predict.py``), fp32 and ``--fp16``.

Printed per run: wall seconds (read -> write), the ratio to torch's, label agreement with
torch, peak RSS; then the installed size of a fresh virtualenv holding only the runner's
``requirements.txt`` next to the size of the environment medseg runs in (its site-packages).
Target (issue 24): the fastest <= 0.5x torch's time at >= 99.9 % agreement, peak memory not
above torch's.

Run::

    OMP_NUM_THREADS=2 python benchmarks/bench_export.py [--shape 384 384 200] [--no-venv]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

PREPROCESSING = {"orientation": "RAS", "spacing_mm": [1.5, 1.5, 3.0],
                 "intensity": {"mode": "ct", "window": [-200, 300]}}
TARGET_RATIO, TARGET_AGREEMENT = 0.5, 0.999


def save_model(path: Path) -> Path:
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.checkpoint import save_checkpoint

    model = models.create("unet3d", 1, 6, seed=0, depth=4, width=8)
    card = ModelCard(NetworkSpec.of(model), PREPROCESSING,
                     {k: f"class_{k}" for k in range(1, 6)},
                     WindowSettings((96, 96, 48), 0.25, "gaussian", 2))
    return save_checkpoint(path, model, card)


def child(image: str, model: str, out: str, backend: str) -> None:
    """Read -> predict -> write one case with medseg; print seconds and peak RSS as JSON."""
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.io import read_volume, write_volume
    from medseg.runtime import Runtime

    start = time.perf_counter()
    result = predict_case(model, read_volume(image), PredictOptions(backend=backend),
                          Runtime.cpu())
    write_volume(result.labels, out)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb":
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


def runner_child(folder: str, image: str, out: str) -> None:
    """The exported runner in this process (no torch imported); seconds and peak RSS."""
    import runpy

    start = time.perf_counter()
    sys.path.insert(0, str(Path(folder)))  # as `python DIR/predict.py` puts DIR first
    sys.argv = [str(Path(folder) / "predict.py"), image, out]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb":
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


def timed(command: list[str]) -> dict:
    """Run ``command``; wall seconds and the peak RSS (GB) it reports."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1])
    result["wall_s"] = seconds
    return result


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def venv_sizes(requirements: Path, work: Path) -> tuple[float, float] | None:
    """(runner's fresh virtualenv, medseg's site-packages) in MB, or None if pip fails."""
    env = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                           str(requirements)], capture_output=True, text=True, env=clean)
    if proc.returncode != 0:
        print(f"  (fresh virtualenv not measured: {proc.stderr.strip()[-200:]})")
        return None
    site = Path(sysconfig.get_paths()["purelib"])
    return folder_size(env) / 1e6, folder_size(site) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(384, 384, 200))
    parser.add_argument("--no-venv", action="store_true", help="skip the installed sizes")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--runner", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.runner:
        runner_child(*args.runner)
        return 0
    import nibabel as nib

    from medseg.data.phantom import make_phantom
    from medseg.export import export_model
    from medseg.io import write_volume

    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    case = make_phantom(tuple(args.shape), (0.8, 0.8, 1.5), orientation="LPS", seed=0)
    image = write_volume(case.image, work / "case.nii.gz")
    model = save_model(work / "model.safetensors")
    exports = {"runner fp32": export_model(model, work / "export"),
               "runner fp16": export_model(model, work / "export16", fp16=True)}
    print(f"bench_export: {'x'.join(map(str, args.shape))} phantom, unet3d 6 classes, "
          f"roi 96x96x48, {os.environ.get('OMP_NUM_THREADS', 'all')} threads")
    runs: dict[str, dict] = {}
    for backend in ("torch", "onnxruntime", "auto"):
        out = work / f"{backend}.nii.gz"
        runs[f"predict --backend {backend}"] = timed(
            [sys.executable, __file__, "--child", str(image), str(model), str(out), backend])
        runs[f"predict --backend {backend}"]["out"] = out
    for name, folder in exports.items():
        out = work / f"{name.replace(' ', '_')}.nii.gz"
        runs[name] = timed([sys.executable, __file__, "--runner", str(folder), str(image),
                            str(out)])
        runs[name]["out"] = out
    reference = np.asarray(nib.load(runs["predict --backend torch"]["out"]).dataobj)
    base = runs["predict --backend torch"]
    print(f"  {'run':28s} {'seconds':>8s} {'ratio':>6s} {'agree %':>8s} {'peak GB':>8s}")
    for name, res in runs.items():
        labels = np.asarray(nib.load(res["out"]).dataobj)
        res["agreement"] = float(np.mean(labels == reference))
        res["ratio"] = res["wall_s"] / base["wall_s"]
        print(f"  {name:28s} {res['wall_s']:8.2f} {res['ratio']:6.2f} "
              f"{100 * res['agreement']:8.3f} {res['peak_rss_gb']:8.2f}")
    fastest = min((r for n, r in runs.items() if "fp16" not in n and n != "predict --backend torch"),
                  key=lambda r: r["wall_s"])
    ok = (fastest["ratio"] <= TARGET_RATIO and fastest["agreement"] >= TARGET_AGREEMENT
          and fastest["peak_rss_gb"] <= base["peak_rss_gb"])
    print(f"  fastest fp32 alternative: {fastest['ratio']:.2f}x torch's time, "
          f"{100 * fastest['agreement']:.3f} % agreement: "
          f"{'MEETS' if ok else 'MISSES'} the target (<= {TARGET_RATIO}x, >= 99.9 %, "
          "peak memory <= torch's)")
    if not args.no_venv:
        sizes = venv_sizes(exports["runner fp32"] / "requirements.txt", work)
        if sizes is not None:
            print(f"  installed size: runner's fresh virtualenv {sizes[0]:.0f} MB; "
                  f"medseg's environment (site-packages) {sizes[1]:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
