"""Benchmark: self-configured training on the real left-atrium cohort (80 LGE-MRI cases).

plan -> train -> held-out evaluation, each step timed, with no hand edit anywhere:

1. ``medseg plan dataset.json -o PLAN --device D [--time-budget H]``;
2. ``medseg train PLAN/plan.yaml -o RUN --folds 5`` (all folds, then the out-of-fold
   evaluation into ``RUN/cv/``), or ``--fold N`` for one fold (the CPU check of issue 13:
   ``--time-budget 1`` on 2 cores must train one fold in <= 60 min);
3. for a single fold: ``medseg predict`` of its held-out cases (``RUN/splits.json``) with
   its best checkpoint, then ``medseg evaluate`` against their labels.

Printed: the plan summary, the wall time of each step, and per fold (or for the one fold)
mean Dice, HD95 in mm and in voxels (the literature on this cohort quotes voxels; the
cohort is 0.625 mm isotropic, so voxels = mm / 0.625), against the published reference:
a fully supervised V-Net reaches about 0.91 Dice on the held-out 20 test cases (which we do
not have: these numbers are cross-validation on the 80 training cases).

Run::

    python benchmarks/bench_la.py --device cpu --time-budget 1 --fold 0 -o /tmp/la
    python benchmarks/bench_la.py --device cuda -o /tmp/la        # 5 folds on a GPU

Skips (exit 0, with the reason) when ../shared/data/la_mri is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "la_mri" / "dataset.json"
SPACING_MM = 0.625  # the cohort's isotropic voxel size
REFERENCE_DICE = 0.91


def medseg(*args: str) -> float:
    """Run ``medseg ARGS`` (this interpreter); its wall seconds. A failure stops the bench."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "medseg", *args], check=False)
    if proc.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed ({proc.returncode})")
    return time.perf_counter() - start


def held_out(run: Path, fold: int, out: Path) -> tuple[Path, Path]:
    """A CSV manifest (image,label) of fold ``fold``'s held-out cases, and a folder linking
    their labels (what ``medseg evaluate --gt`` pairs with the predictions by case name)."""
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import fold_cases, read_splits

    cases = load_manifest(DATA).cases
    splits = read_splits(run / "splits.json")
    _, val = fold_cases(cases, splits, fold)
    labels = out.parent / f"fold_{fold}_labels"
    labels.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for case in val:
            writer.writerow([str(case.images[0]), str(case.label)])
            link = labels / case.label.name
            if not link.exists():
                link.symlink_to(case.label)
    return out, labels


def summarize(summary_json: Path) -> dict[str, float]:
    """Mean Dice and HD95 (mm, voxels) of label 1 from an evaluation's summary.json."""
    labels = json.loads(summary_json.read_text())["labels"]
    if "1" not in labels:
        raise SystemExit(f"{summary_json}: no label 1, only {sorted(labels)}")
    metrics = labels["1"]["metrics"]
    hd95 = float(metrics["hd95_mm"]["mean"])
    return {"dice": float(metrics["dice"]["mean"]), "hd95_mm": hd95,
            "hd95_vox": hd95 / SPACING_MM, "cases": int(metrics["dice"]["n"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="work folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-budget", type=float, default=None, metavar="H")
    parser.add_argument("--fold", type=int, default=None, help="train and score one fold only")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    plan, run = args.output / "plan", args.output / "run"
    times = {}
    budget = ["--time-budget", str(args.time_budget)] if args.time_budget else []
    times["plan"] = medseg("plan", str(DATA), "-o", str(plan), "--device", args.device, *budget)
    fold = ["--fold", str(args.fold)] if args.fold is not None else []
    times["train"] = medseg("train", str(plan / "plan.yaml"), "-o", str(run), "--folds", "5",
                            *fold, "--device", args.device, "--no-progress")
    if args.fold is None:
        scores = summarize(run / "cv" / "summary.json")
        what = "5-fold out-of-fold"
    else:
        manifest, labels = held_out(run, args.fold, args.output / "held_out.csv")
        preds = args.output / f"fold_{args.fold}_predictions"
        times["predict"] = medseg("predict", "-m", str(run / f"fold_{args.fold}" /
                                                     "best.safetensors"),
                                  "-i", str(manifest), "-o", str(preds), "--device",
                                  args.device)
        times["evaluate"] = medseg("evaluate", "--pred", str(preds), "--gt", str(labels),
                                   "-o", str(args.output / "eval" / "results.csv"))
        scores = summarize(args.output / "eval" / "summary.json")
        what = f"fold {args.fold} held-out"
    print("\nwall time per step: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"{what} ({scores['cases']} cases): Dice {scores['dice']:.4f}, HD95 "
          f"{scores['hd95_mm']:.2f} mm = {scores['hd95_vox']:.2f} voxels; "
          f"ratio to the published {REFERENCE_DICE} Dice: {scores['dice'] / REFERENCE_DICE:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
