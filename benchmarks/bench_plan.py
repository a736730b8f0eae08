"""medseg plan beside nnU-Net v2's planner on the same manifest, one run.

The manifest's training cases are linked into an nnU-Net raw dataset in a temporary
folder (``imagesTr/<case>_<XXXX>.nii.gz``, ``labelsTr``, ``dataset.json``), then
``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` run on it (nnU-Net's
default planner, its 8 GB GPU reference). The 3d_fullres target spacing, patch size,
pooling and batch size are printed beside medseg's plan for a GPU of 8 GiB (and for the CPU),
with the fingerprint and planning wall times.

nnU-Net reads NIfTI through SimpleITK, so its arrays are (z, y, x): its spacing, patch
and strides are reversed here into medseg's (x, y, z).

Data: ``<repo>/../shared/data/la_mri`` (80 LGE-MRI cases) when present, else phantoms.
Needs nnunetv2 (``pip install nnunetv2 torch==<the installed version>``).

``--repeat-budget H`` also runs ``medseg plan --device cpu --time-budget H`` twice in a
row and prints whether the two plans chose the same patch, batch and network, and the ratio
of their epoch counts (target: within 10 %), beside each plan's wall time and
``train.max_minutes``.

Usage: ``python benchmarks/bench_plan.py [--manifest dataset.json] [--gpu-memory-gb 8]
[--repeat-budget 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LA_MRI = REPO.parent / "shared" / "data" / "la_mri" / "dataset.json"
sys.path.insert(0, str(REPO))


def nnunet_raw(manifest_path: Path, root: Path) -> Path:
    """Link the training cases of ``manifest_path`` into ``root/nnUNet_raw/Dataset990_X``."""
    from medseg.data.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    folder = root / "nnUNet_raw" / "Dataset990_Bench"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = [c for c in manifest.cases if c.split != "test" and c.label is not None]
    for case in cases:
        for c, image in enumerate(case.images):
            (folder / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz").symlink_to(image.resolve())
        (folder / "labelsTr" / f"{case.case_id}.nii.gz").symlink_to(case.label.resolve())
    labels = {"background": 0, **{n: k for k, n in manifest.label_names.items() if k}}
    doc = {"channel_names": dict(enumerate(manifest.channel_names)), "labels": labels,
           "numTraining": len(cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(doc, indent=1))
    return folder


def run_nnunet(root: Path) -> tuple[dict, float]:
    env = {**os.environ, "nnUNet_raw": str(root / "nnUNet_raw"),
           "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
           "nnUNet_results": str(root / "nnUNet_results")}
    bin_dir = Path(sys.executable).parent
    start = time.perf_counter()
    for cmd in (["nnUNetv2_extract_fingerprint", "-d", "990", "-np", "2"],
                ["nnUNetv2_plan_experiment", "-d", "990"]):
        subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], env=env, check=True,
                       capture_output=True)
    seconds = time.perf_counter() - start
    plans = root / "nnUNet_preprocessed" / "Dataset990_Bench" / "nnUNetPlans.json"
    return json.loads(plans.read_text())["configurations"]["3d_fullres"], seconds


def nnunet_row(cfg: dict) -> dict:
    strides = cfg["architecture"]["arch_kwargs"]["strides"][1:]
    return {"spacing_mm": [round(s, 4) for s in cfg["spacing"][::-1]],
            "patch": cfg["patch_size"][::-1], "batch": cfg["batch_size"],
            "pooling": [list(s[::-1]) for s in strides]}


def medseg_row(plan) -> dict:
    d = plan.design
    return {"spacing_mm": [round(s, 4) for s in plan.spacing_mm], "patch": list(d.patch),
            "batch": d.batch_size, "pooling": [list(p) for p in d.pools],
            "layout": d.layout}


def phantom_manifest(root: Path) -> Path:
    from medseg.data.phantom_dataset import PhantomConfig
    from medseg.data.phantom_dataset import write_phantom_dataset

    cfg = PhantomConfig(n_train=6, n_val=0, shape=[96, 96, 48], spacing_mm=[1.5, 1.5, 4.0])
    return write_phantom_dataset(cfg, root / "phantoms")


def repeat_budget(manifest: Path, hours: float) -> None:
    """Two time-budgeted CPU plans in a row: same design, epochs within 10 %?"""
    from medseg.planning import PlanOptions, make_plan

    plans, seconds = [], []
    for _ in range(2):
        start = time.perf_counter()
        plans.append(make_plan(manifest, PlanOptions("cpu", time_budget_h=hours)))
        seconds.append(time.perf_counter() - start)
    for i, (plan, wall) in enumerate(zip(plans, seconds), 1):
        d = plan.design
        print(f"plan {i}: patch {list(d.patch)} batch {d.batch_size} width {d.width} "
              f"levels {len(d.pools) + 1}; {plan.epochs} x {plan.iterations_per_epoch} steps at "
              f"{plan.step_seconds:.3f} s; max_minutes {plan.max_minutes}; planned in "
              f"{wall:.1f} s")
    a, b = plans
    same = a.design == b.design and a.spacing_mm == b.spacing_mm
    ratio = max(a.epochs, b.epochs) / min(a.epochs, b.epochs)
    print(f"same patch, batch and network: {same}; epochs ratio {ratio:.3f} (target <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0)
    parser.add_argument("--repeat-budget", type=float, default=None, metavar="H")
    args = parser.parse_args()
    from medseg.planning import PlanOptions, make_plan

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = args.manifest or (LA_MRI if LA_MRI.is_file() else phantom_manifest(root))
        print(f"manifest: {manifest}")
        nn_cfg, nn_seconds = run_nnunet(root) if nnunet_raw(manifest, root) else ({}, 0.0)
        start = time.perf_counter()
        gpu = make_plan(manifest, PlanOptions("cuda", gpu_memory_gb=args.gpu_memory_gb))
        ms_seconds = time.perf_counter() - start
        cpu = make_plan(manifest, PlanOptions("cpu"))
        if args.repeat_budget is not None:
            repeat_budget(manifest, args.repeat_budget)
    rows = {"nnU-Net 3d_fullres": nnunet_row(nn_cfg),
            f"medseg cuda {args.gpu_memory_gb:g} GiB": medseg_row(gpu),
            "medseg cpu": medseg_row(cpu)}
    for key in ("spacing_mm", "patch", "batch", "pooling", "layout"):
        for name, row in rows.items():
            print(f"{key:<11} {name:<24} {row.get(key, '3d')}")
    print(f"wall time: nnU-Net fingerprint + plan {nn_seconds:.1f} s, medseg plan "
          f"{ms_seconds:.1f} s (ratio medseg / nnU-Net {ms_seconds / nn_seconds:.2f})")


if __name__ == "__main__":
    main()
