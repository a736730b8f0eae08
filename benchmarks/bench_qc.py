"""Benchmark: does QC know which predictions to distrust? (issue 23's targets)

On the shared left-atrium cohort (80 LGE-MRI cases), with a model trained as the team
checks a plan (:func:`plan_and_train`: ``medseg plan --time-budget`` of fold F's 64 training
cases, then ``medseg train PLAN/plan.yaml``, one run that holds out its own validation cases;
fold F's 16 cases are the held-out test) or one given with ``--model RUN`` (``RUN/fold_F/
best.safetensors`` and ``RUN/splits.json``, a run folder of ``bench_la.py`` or of this bench):

1. calibration: ``medseg calibrate`` on ``--calibration-cases`` cases the model did not train
   on where the run has them (a single run's own validation cases, ``data.val_fraction`` of
   its ``config.yaml``), else on training cases of the fold (a model is more confident on
   its training cases: the fitted temperature is then too low), of a copy of the checkpoint
   with its temperatures reset to 1 (the given model is not changed; a run trained with
   ``train.calibrate`` arrives calibrated); the expected calibration error (15 bins,
   foreground-near voxels) on the held-out cases before and after;
2. ``medseg predict`` of the held-out cases, plain and with ``--qc`` (timed: the ratio is a
   target), with the model's card settings (``--tta`` follows the card);
3. ``medseg evaluate --qc``: Spearman and MAE of estimated vs true Dice on the clean cases,
   and how many clean cases with true Dice >= 0.85 were flagged;
4. the first ``--corrupted`` held-out cases under every corruption of
   :mod:`medseg.data.corrupt`, predicted with ``--qc``: each must be flagged.

Printed: each number beside its target. Run::

    python benchmarks/bench_qc.py -o /tmp/qc --device cpu --minutes 60      # the real check
    python benchmarks/bench_qc.py -o /tmp/qc --model /tmp/la/run --fold 0   # bench_la's model
    python benchmarks/bench_qc.py -o /tmp/qc --minutes 5 --held-out 4       # end to end, tiny

Skips (exit 0, with the reason) when ../shared/data/la_mri is absent.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from bench_la import DATA, ensure_splits, medseg, write_manifest  # medseg ARGS timed


def fold_cases(run: Path, fold: int):
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import fold_cases as split, read_splits

    cases = load_manifest(DATA).cases
    return split(cases, read_splits(run / "splits.json"), fold)


def plan_and_train(out: Path, fold: int, minutes: float, device: str,
                   times: dict[str, float]) -> Path:
    """``out/run``: ``splits.json`` (the 5 folds ``medseg train --folds 5`` makes) and in
    ``fold_<fold>`` one run trained as the team checks issue 22: ``medseg plan`` of the fold's
    training cases with a ``minutes`` budget, then ``medseg train PLAN/plan.yaml`` (its own
    validation share, on which it calibrates itself), so that the fold's cases are test cases
    the plan never saw; wall seconds of each step into ``times``."""
    run = out / "run"
    ensure_splits(DATA, run)
    train, _ = fold_cases(run, fold)
    labels = {Path(c.label).resolve() for c in train}
    entries = [e for e in json.loads(DATA.read_text())["training"]
               if (DATA.parent / e["label"]).resolve() in labels]
    manifest = write_manifest(entries, out / f"train_fold_{fold}.json")
    times["plan"] = medseg("plan", str(manifest), "-o", str(out / "plan"), "--device", device,
                           "--time-budget", str(minutes / 60))
    times["train"] = medseg("train", str(out / "plan" / "plan.yaml"), "-o",
                            str(run / f"fold_{fold}"), "--device", device, "--no-progress")
    return run


def run_validation_cases(run_dir: Path):
    """The validation cases a single run (``RUN/config.yaml`` with ``data.val_fraction`` and
    no split file) held out of its training, or None."""
    from medseg.config import load_config
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import split_train_val

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    cfg = load_config(path)
    if cfg.data.split_file is not None or not cfg.data.val_fraction or not cfg.data.manifest:
        return None
    return split_train_val(load_manifest(cfg.data.manifest).cases, cfg.data.val_fraction,
                           cfg.train.seed)[1] or None


def link_folder(folder: Path, files: list[Path]) -> Path:
    """``folder`` holding symlinks to ``files`` (by their own names)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return folder


def with_temperatures(model: Path, copy: Path, temperature: float | None = None) -> Path:
    """``copy``: ``model`` without the labels' own temperatures, and with ``temperature``
    in place of its own where given (1.0: the uncalibrated network; a run trained with
    ``train.calibrate`` arrives calibrated)."""
    from medseg.checkpoint import load_checkpoint, update_card

    shutil.copy(model, copy)
    card = load_checkpoint(copy).card
    if card.confidence is not None:  # a model without one is uncalibrated
        changes = {} if temperature is None else {"temperature": temperature}
        update_card(copy, card.replace(confidence=card.confidence.replace(
            label_temperatures={}, **changes)))
    return copy


def held_out_ece(model: Path, cases, device: str) -> float:
    from medseg.inference.calibration import calibrate
    from medseg.runtime import Runtime

    return calibrate(model, cases, Runtime.resolve(device), progress=False,
                     reference=False).before.ece


def corrupted_inputs(cases, out: Path) -> Path:
    """Every corruption of every case, ``<case>__<corruption>.nii.gz`` in ``out``."""
    from medseg.data.corrupt import CORRUPTIONS
    from medseg.io import read_volume, write_volume

    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        image = read_volume(case.images[0])
        for name, function in CORRUPTIONS.items():
            write_volume(function(image, 0), out / f"{case.case_id}__{name}.nii.gz")
    return out


def qc_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="work folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", type=Path, default=None, metavar="RUN",
                        help="a trained run folder (fold_F/best.safetensors, splits.json); "
                             "default: plan and train one here")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="training budget of the planned model (default 60)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=None,
                        help="use only the first N held-out cases (default: all 16)")
    parser.add_argument("--calibration-cases", type=int, default=None,
                        help="default: all of a single run's validation cases, else 10 "
                             "of the fold's training cases")
    parser.add_argument("--corrupted", type=int, default=3,
                        help="held-out cases to corrupt in every way (default 3)")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    out, times = args.output, {}
    out.mkdir(parents=True, exist_ok=True)
    run = args.model or plan_and_train(out, args.fold, args.minutes, args.device, times)
    train, val = fold_cases(run, args.fold)
    val = val[: args.held_out] if args.held_out else val
    original = with_temperatures(run / f"fold_{args.fold}" / "best.safetensors",
                                 out / "model_uncalibrated.safetensors", temperature=1.0)
    model = out / "model.safetensors"
    shutil.copy(original, model)

    # 1. calibration on the run's validation cases (else training cases), ECE on the
    # held-out ones
    own = run_validation_cases(run / f"fold_{args.fold}")
    calib = (own or train)[: args.calibration_cases or (len(own) if own else 10)]
    print(f"calibration on {len(calib)} {'validation' if own else 'training'} cases of the "
          "model")
    times["calibrate"] = medseg(
        "calibrate", str(model), "--device", args.device, "--report",
        str(out / "calibration.json"),
        "--images", str(link_folder(out / "calib_images", [c.images[0] for c in calib])),
        "--labels", str(link_folder(out / "calib_labels", [c.label for c in calib])))
    ece_before = held_out_ece(original, val, args.device)
    ece_after = held_out_ece(model, val, args.device)
    ece_single = held_out_ece(with_temperatures(model, out / "model_single_t.safetensors"),
                              val, args.device)

    # 2. plain and --qc prediction of the held-out cases
    images = link_folder(out / "held_out_images", [c.images[0] for c in val])
    labels = link_folder(out / "held_out_labels", [c.label for c in val])
    times["predict"] = medseg("predict", "-m", str(model), "-i", str(images), "-o",
                              str(out / "plain"), "--device", args.device)
    times["predict --qc"] = medseg("predict", "-m", str(model), "-i", str(images), "-o",
                                   str(out / "clean"), "--device", args.device, "--qc")
    # 3. QC against the truth
    medseg("evaluate", "--pred", str(out / "clean"), "--gt", str(labels), "-o",
           str(out / "eval" / "results.csv"), "--qc", str(out / "clean" / "qc.csv"))
    qc = json.loads((out / "eval" / "qc_evaluation.json").read_text())
    with (out / "eval" / "results.csv").open(newline="") as handle:
        dice = {r["case"]: float(r["dice"]) for r in csv.DictReader(handle) if r["label"] == "1"}
    clean = {r["case"]: r["flag"] for r in qc_rows(out / "clean" / "qc.csv")}
    good = [c for c, d in dice.items() if d >= 0.85]
    good_flagged = sum(clean[c] != "ok" for c in good)
    # 4. corrupted inputs
    corrupted = corrupted_inputs(val[: args.corrupted], out / "corrupted_images")
    medseg("predict", "-m", str(model), "-i", str(corrupted), "-o", str(out / "corrupted"),
           "--device", args.device, "--qc")
    bad = qc_rows(out / "corrupted" / "qc.csv")
    missed = [r["case"] for r in bad if r["flag"] == "ok"]

    def show(value):
        return "n/a" if value is None or value != value else f"{value:.3f}"

    print("\nwall time per step: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"held-out cases: {len(val)} (fold {args.fold}); mean true Dice "
          f"{sum(dice.values()) / max(len(dice), 1):.3f}")
    print(f"Spearman(estimated, true Dice) {show(qc['spearman'])}   target >= 0.6")
    print(f"MAE(estimated, true Dice)      {show(qc['mae'])}   target <= 0.05")
    print(f"AUROC flag != ok for Dice < 0.8 {show(qc['auroc_flag'])}  ({qc['failures']} "
          f"failures among {qc['n']})")
    print(f"AUROC 1 - estimated Dice, same  {show(qc['auroc_estimate'])}  (the ranking alone, "
          "without the flag's thresholds)")
    print(f"corrupted cases flagged        {len(bad) - len(missed)}/{len(bad)}   target all"
          + (f" (missed: {', '.join(missed)})" if missed else ""))
    print(f"clean Dice >= 0.85 flagged     {good_flagged}/{len(good)}   target <= 15 %")
    print(f"ECE held-out before / after    {show(ece_before)} / {show(ece_after)}   "
          "target after <= before / 2")
    print(f"ECE held-out, one temperature  {show(ece_single)}   (label temperatures kept: "
          f"{json.loads((out / 'calibration.json').read_text())['label_temperatures'] or 'none'})")
    ratio = times["predict --qc"] / times["predict"]
    print(f"--qc time / plain predict      {ratio:.2f}   target <= 2 (process start included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
