"""Benchmark: CPU predict with each backend and the exported runners against torch fp32.

Two workloads (``--model``):

* ``phantom`` (default): one phantom CT (``make_phantom``, LPS, 0.8 x 0.8 x 1.5 mm; default
  384 x 384 x 200 as in ``bench_predict.py``) and one random-weight ``unet3d`` checkpoint
  (depth 4, width 8, 6 classes, reorient to RAS, resample to 1.5 x 1.5 x 3 mm, CT window,
  roi 96 x 96 x 48, overlap 0.25, 2 windows per batch);
* ``la``: the left-atrium plan's model: ``medseg plan`` of ``--dataset`` (default
  ``../shared/data/la_mri/dataset.json``, or ``--plan`` an existing ``plan.yaml``), its
  network (``unet3d`` depth 6, widths 32..320, roi 128 x 128 x 96 at 0.625 mm) with
  random weights (seed 0: no trained LA model exists; timing and agreement only), on the
  first ``--cases`` images of the dataset.

``--checkpoint MODEL`` runs a given model instead (anything ``medseg predict`` takes: a
trained checkpoint, a run folder, ``nnunet:FOLDER``), and ``--images DIR`` (or image files)
the first ``--cases`` NIfTI images there (sorted by name) instead of the workload's images;
with ``--checkpoint`` alone the images are the phantom's.

Each run is its own subprocess so that its peak RSS (``ru_maxrss``) is its own:

* ``medseg predict --backend torch`` (fp32): the reference;
* ``--backend onnxruntime``, ``--backend openvino``, ``--backend auto`` (fp32) and
  ``--backend openvino --amp`` (bf16);
* the exported runners (``medseg export``; ``python DIR/predict.py``): ONNX fp32 and
  ``--fp16``, OpenVINO fp32 and ``--bf16``.

Every run uses one engine cache (``$MEDSEG_CACHE`` set to a folder of the bench,
:mod:`medseg.inference.engine_cache`); before the timed rounds each non-torch run goes once
over the first image, untimed except for its printed "first run" time, which builds the
cache (ONNX export, OpenVINO's compiled blobs): the rounds time what a user's second and
later runs take. ``--repeat N`` runs the whole set N times, interleaved (the 2-core machine is shared and
noisy), and prints per run the median wall seconds (read -> write) with the min-max
spread, the median ratio to torch's time of the same round, label agreement with torch,
and peak RSS; then the installed size of a fresh virtualenv holding only the runner's
``requirements.txt`` next to the size of the environment medseg runs in (its
site-packages). Target (issue 24): the fastest run <= 0.5x torch's time at >= 99.9 %
agreement, peak memory not above torch's.

Run::

    OMP_NUM_THREADS=2 python benchmarks/bench_export.py [--shape 384 384 200] [--no-venv]
    OMP_NUM_THREADS=2 python benchmarks/bench_export.py --model la --cases 1 --no-venv
    OMP_NUM_THREADS=2 python benchmarks/bench_export.py --checkpoint runs/la/best.safetensors \
        --images data/imagesTs --cases 4 --repeat 2 --no-venv
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
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
LA_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "la_mri" / "dataset.json"
#: name -> (backend, amp) of ``medseg predict`` runs; torch fp32 first (the reference).
PREDICT_RUNS = {"predict --backend torch": ("torch", False),
                "predict --backend onnxruntime": ("onnxruntime", False),
                "predict --backend openvino": ("openvino", False),
                "predict --backend auto": ("auto", False),
                "predict --backend openvino --amp": ("openvino", True)}
#: name -> (export format, fp16, runner arguments)
RUNNER_RUNS = {"runner onnx fp32": ("onnx", False, ()),
               "runner onnx --fp16": ("onnx", True, ()),
               "runner openvino fp32": ("openvino", False, ()),
               "runner openvino --bf16": ("openvino", False, ("--bf16",))}


def save_model(path: Path) -> Path:
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.checkpoint import save_checkpoint

    model = models.create("unet3d", 1, 6, seed=0, depth=4, width=8)
    card = ModelCard(NetworkSpec.of(model), PREPROCESSING,
                     {k: f"class_{k}" for k in range(1, 6)},
                     WindowSettings((96, 96, 48), 0.25, "gaussian", 2))
    return save_checkpoint(path, model, card)


def save_la_model(path: Path, plan: Path) -> Path:
    """The plan's network with random weights (seed 0) and the plan's card, 2 classes."""
    from medseg import models
    from medseg.card import NetworkSpec
    from medseg.checkpoint import save_checkpoint
    from medseg.config import load_config

    cfg = load_config(plan)
    model = models.create(cfg.model.name, in_channels=1, out_channels=2,
                          **{"seed": 0, **dict(cfg.model.kwargs)})
    return save_checkpoint(path, model, cfg.model_card(NetworkSpec.of(model),
                                                       {1: "left_atrium"}))


def la_plan(dataset: Path, work: Path) -> Path:
    """``medseg plan dataset -o work/plan --device cpu --no-2d``: its plan.yaml."""
    subprocess.run([sys.executable, "-m", "medseg", "plan", str(dataset), "-o",
                    str(work / "plan"), "--device", "cpu", "--no-2d", "--no-progress"],
                   check=True, capture_output=True)
    return work / "plan" / "plan.yaml"


def child(image: str, model: str, out: str, backend: str, amp: str) -> None:
    """Read -> predict -> write one case with medseg; print seconds and peak RSS as JSON."""
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.io import read_volume, write_volume
    from medseg.runtime import Runtime

    start = time.perf_counter()
    result = predict_case(model, read_volume(image), PredictOptions(backend=backend),
                          Runtime.resolve("cpu", amp == "1"))
    write_volume(result.labels, out)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb":
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}))


def runner_child(folder: str, image: str, out: str, *extra: str) -> None:
    """The exported runner in this process (no torch imported); seconds and peak RSS."""
    import runpy

    start = time.perf_counter()
    sys.path.insert(0, str(Path(folder)))  # as `python DIR/predict.py` puts DIR first
    sys.argv = [str(Path(folder) / "predict.py"), image, out, *extra]
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
    parser.add_argument("--model", choices=["phantom", "la"], default="phantom")
    parser.add_argument("--shape", type=int, nargs=3, default=(384, 384, 200))
    parser.add_argument("--dataset", type=Path, default=LA_DATASET, help="--model la's data")
    parser.add_argument("--plan", type=Path, default=None, help="--model la: this plan.yaml "
                        "instead of planning --dataset")
    parser.add_argument("--cases", type=int, default=1, help="--model la / --images: images "
                        "to run")
    parser.add_argument("--checkpoint", default=None, help="run this model (anything medseg "
                        "predict takes) instead of the workload's")
    parser.add_argument("--images", type=Path, nargs="+", default=None, help="NIfTI images "
                        "(or a folder of them) instead of the workload's")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every run")
    parser.add_argument("--only", nargs="*", default=None, metavar="RUN",
                        help="runs to do (names as printed; torch is always run)")
    parser.add_argument("--no-venv", action="store_true", help="skip the installed sizes")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--runner", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    if args.runner:
        runner_child(*args.runner)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_export_"))
    os.environ["MEDSEG_CACHE"] = str(work / "cache")  # the children's engine cache
    images, model, title = _workload(args, work)
    if images is None:
        return 0
    print(f"bench_export: {title}, {os.environ.get('OMP_NUM_THREADS', 'all')} threads, "
          f"{args.repeat} round(s), {len(images)} case(s)", flush=True)
    commands = _commands(args, model, work)
    for name in list(commands)[1:]:  # builds the engine cache; not part of the rounds
        first = _run_all(commands, images[:1], work, name)
        print(f"  first run (builds the cache): {name}: {first['wall_s']:.2f} s", flush=True)
    rounds = []
    for number in range(args.repeat):
        rounds.append([])
        for name in commands:
            rounds[-1].append(_run_all(commands, images, work, name))
            print(f"  round {number + 1}: {name}: {rounds[-1][-1]['wall_s']:.2f} s "
                  f"({rounds[-1][-1]['wall_s'] / rounds[-1][0]['wall_s']:.2f}x torch's), "
                  f"peak {rounds[-1][-1]['peak_rss_gb']:.2f} GB", flush=True)
    _report(commands, rounds, images, work)
    if not args.no_venv:
        folder = export_model_cached(model, work, "onnx", False)
        sizes = venv_sizes(folder / "requirements.txt", work)
        if sizes is not None:
            print(f"  installed size: runner's fresh virtualenv {sizes[0]:.0f} MB; "
                  f"medseg's environment (site-packages) {sizes[1]:.0f} MB")
    return 0


def _workload(args, work: Path) -> tuple[list[Path] | None, Path | str, str]:
    """(images, model, title): ``--checkpoint`` / ``--images`` where given, else those of
    ``--model``; (None, ...) when the LA data is absent."""
    if args.checkpoint is None and args.images is None:
        return _model_workload(args, work)
    images = _listed_images(args.images, args.cases) if args.images else None
    model: Path | str | None = args.checkpoint
    title = ""
    if model is None or images is None:
        default_images, default_model, title = _model_workload(args, work)
        images = images or default_images
        model = model or default_model
    if args.checkpoint is not None:
        from medseg.runtime import Runtime
        from medseg.sources import load_model

        card = load_model(args.checkpoint, Runtime.cpu()).card
        title = (f"{args.checkpoint}: {card.model.name} {card.model.options}, roi "
                 f"{card.window.roi_size}, overlap {card.window.overlap}")
    if args.images:
        title += f"; images {', '.join(p.name for p in images)}"
    return images, model, title


def _listed_images(given: list[Path], cases: int) -> list[Path]:
    """The first ``cases`` NIfTI files of ``given`` (files, or folders of them), by name."""
    files = []
    for path in given:
        files += (sorted(p for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
                  if path.is_dir() else [path])
    if not files:
        raise SystemExit(f"bench_export: no NIfTI image in {' '.join(map(str, given))}")
    return files[:cases]


def _model_workload(args, work: Path) -> tuple[list[Path] | None, Path, str]:
    """(images, checkpoint, title) of ``--model``; (None, ...) when the LA data is absent."""
    from medseg.io import write_volume

    if args.model == "phantom":
        from medseg.data.phantom import make_phantom

        case = make_phantom(tuple(args.shape), (0.8, 0.8, 1.5), orientation="LPS", seed=0)
        images = [write_volume(case.image, work / "case.nii.gz")]
        return images, save_model(work / "model.safetensors"), (
            f"{'x'.join(map(str, args.shape))} phantom, unet3d 6 classes, roi 96x96x48")
    if args.plan is None and not args.dataset.is_file():
        print(f"bench_export --model la: skipped ({args.dataset} is absent)")
        return None, work, ""
    plan = args.plan or la_plan(args.dataset, work)
    data = json.loads(args.dataset.read_text())
    images = [args.dataset.parent / entry["image"].lstrip("./")
              for entry in data["training"][:args.cases]]
    model = save_la_model(work / "la.safetensors", plan)
    from medseg.checkpoint import load_checkpoint

    card = load_checkpoint(model).card
    return images, model, (f"left-atrium plan's network (random weights) {card.model.name} "
                           f"{card.model.options}, roi {card.window.roi_size}, overlap "
                           f"{card.window.overlap}")


_EXPORTS: dict[tuple[str, bool], Path] = {}


def export_model_cached(model: Path, work: Path, fmt: str, fp16: bool) -> Path:
    from medseg.export import export_model

    if (fmt, fp16) not in _EXPORTS:
        _EXPORTS[fmt, fp16] = export_model(model, work / f"export_{fmt}_{int(fp16)}", fmt, fp16)
    return _EXPORTS[fmt, fp16]


def _commands(args, model: Path, work: Path) -> dict[str, list[str]]:
    """name -> the command of one run, without its image and output."""
    wanted = None if args.only is None else {"predict --backend torch", *args.only}
    commands = {}
    for name, (backend, amp) in PREDICT_RUNS.items():
        if wanted is None or name in wanted:
            commands[name] = [sys.executable, __file__, "--child", "{image}", str(model), "{out}",
                              backend, str(int(amp))]
    for name, (fmt, fp16, extra) in RUNNER_RUNS.items():
        if wanted is None or name in wanted:
            folder = export_model_cached(model, work, fmt, fp16)
            commands[name] = [sys.executable, __file__, "--runner", str(folder), "{image}",
                              "{out}", *extra]
    return commands


def _run_all(commands: dict[str, list[str]], images: list[Path], work: Path, name: str
             ) -> dict:
    """One run of ``name`` over every image: summed seconds, max peak RSS, its outputs."""
    total, peak, outs = 0.0, 0.0, []
    for i, image in enumerate(images):
        out = work / f"{_slug(name)}_{i}.nii.gz"
        command = [part.format(image=image, out=out) for part in commands[name]]
        res = timed(command)
        total, peak = total + res["wall_s"], max(peak, res["peak_rss_gb"])
        outs.append(out)
    return {"wall_s": total, "peak_rss_gb": peak, "outs": outs}


def _slug(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_")


def _report(commands: dict, rounds: list[list[dict]], images: list[Path], work: Path) -> None:
    import nibabel as nib

    names = list(commands)
    reference = [np.asarray(nib.load(out).dataobj) for out in rounds[0][0]["outs"]]
    print(f"  {'run':34s} {'seconds (min-max)':>22s} {'ratio':>6s} {'agree %':>8s} "
          f"{'peak GB':>8s}")
    rows = {}
    for j, name in enumerate(names):
        seconds = [r[j]["wall_s"] for r in rounds]
        ratio = statistics.median(r[j]["wall_s"] / r[0]["wall_s"] for r in rounds)
        labels = [np.asarray(nib.load(out).dataobj) for out in rounds[0][j]["outs"]]
        agree = float(sum((a == b).sum() for a, b in zip(labels, reference))
                      / sum(a.size for a in reference))
        peak = max(r[j]["peak_rss_gb"] for r in rounds)
        rows[name] = (ratio, agree, peak)
        spread = f"{statistics.median(seconds):7.2f} ({min(seconds):.2f}-{max(seconds):.2f})"
        print(f"  {name:34s} {spread:>22s} {ratio:6.2f} {100 * agree:8.3f} {peak:8.2f}")
    torch_peak = rows[names[0]][2]
    good = {n: r for n, r in rows.items() if n != names[0] and r[1] >= TARGET_AGREEMENT}
    if not good:
        print("  no run agrees with torch on >= 99.9 % of voxels: MISSES the target")
        return
    name, (ratio, agree, peak) = min(good.items(), key=lambda item: item[1][0])
    ok = ratio <= TARGET_RATIO and peak <= torch_peak
    print(f"  fastest run at >= 99.9 % agreement: {name}, {ratio:.2f}x torch's time, "
          f"{100 * agree:.3f} %, peak {peak:.2f} GB (torch {torch_peak:.2f} GB): "
          f"{'MEETS' if ok else 'MISSES'} the target (<= {TARGET_RATIO}x, peak memory "
          "<= torch's)")


if __name__ == "__main__":
    sys.exit(main())
