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

``--peer nnunet`` trains nnU-Net v2 (first) and medseg on the same fold (``--fold``, default 0)
with the same wall budget (``--minutes``, default 60: planning + training of each system) on
the CPU, and prints both in one table (see :func:`run_nnunet`): nnU-Net's own fingerprint,
default planner and preprocessing (``3d_fullres``), its ``splits_final.json`` written from
medseg's ``RUN/splits.json`` so that its fold is medseg's, its default ``nnUNetTrainer``
in this process on ``cpu`` with the epoch count (and, when one epoch of 250 iterations does not
fit, the iterations per epoch and validation iterations) set on the instance as nnU-Net's
``nnUNetTrainer_Xepochs`` variants do, chosen from its measured step time
(:func:`nnunet_schedule`). Its held-out cases are predicted by ``medseg predict -m
nnunet:FOLDER`` (bit-exact with ``nnUNetPredictor``, ``tests/nnunet/``) and both systems are
scored by the same ``medseg evaluate``. ``--cases N`` runs on the first N cases only (a
short check).

Run::

    python benchmarks/bench_la.py --device cpu --time-budget 1 --fold 0 -o /tmp/la
    python benchmarks/bench_la.py --device cuda -o /tmp/la        # 5 folds on a GPU
    python benchmarks/bench_la.py --peer nnunet -o /tmp/la        # 60 min each, fold 0, CPU
    python benchmarks/bench_la.py --peer nnunet --minutes 4 --cases 20 -o /tmp/la  # short
    python benchmarks/bench_la.py --peer nnunet --medseg-model RUN/best.safetensors -o /tmp/la
                                                # nnU-Net's hour beside a medseg model
                                                # trained earlier on the same fold

Skips (exit 0, with the reason) when ../shared/data/la_mri is absent.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "la_mri" / "dataset.json"
SPACING_MM = 0.625  # the cohort's isotropic voxel size
REFERENCE_DICE = 0.91
FOLDS = 5
sys.path.insert(0, str(ROOT))
NNUNET_CONFIGURATION = "3d_fullres"
#: nnU-Net's default schedule (``nnUNetTrainer.__init__``).
NNUNET_EPOCHS, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS = 1000, 250, 50
#: A reduced nnU-Net schedule keeps at most this many epochs (its poly learning rate steps
#: once per epoch) and at least this many iterations per epoch.
MAX_REDUCED_EPOCHS, MIN_ITERATIONS = 10, 10
#: nnU-Net's step-time measurement takes at most about this share of the budget.
MEASURE_SHARE = 0.1


def medseg(*args: str) -> float:
    """Run ``medseg ARGS`` (this interpreter); its wall seconds. A failure stops the bench."""
    seconds, error = try_medseg(*args)
    if error is not None:
        raise SystemExit(f"medseg {' '.join(args)} failed: {error}")
    return seconds


def try_medseg(*args: str) -> tuple[float, str | None]:
    """Run ``medseg ARGS``: (wall seconds, None), or (seconds, its last error line) when it
    fails; its stderr is passed on as it comes."""
    start = time.perf_counter()
    last = ""
    with subprocess.Popen([sys.executable, "-m", "medseg", *args], stderr=subprocess.PIPE,
                          text=True) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return seconds, None
    return seconds, last or f"exit status {proc.returncode}"


def subset_manifest(cases: int, out: Path) -> Path:
    """``out``: the first ``cases`` training cases of the cohort as an MSD dataset.json with
    absolute paths (the data stays where it is)."""
    entries = json.loads(DATA.read_text())["training"]
    if not 2 * FOLDS <= cases <= len(entries):
        raise SystemExit(f"--cases {cases}: expected {2 * FOLDS} to {len(entries)}")
    return write_manifest(entries[:cases], out)


def write_manifest(entries: list[dict[str, str]], out: Path) -> Path:
    """``out``: the cohort's dataset.json with only ``entries`` (of its ``training`` list),
    their paths made absolute."""
    doc = json.loads(DATA.read_text())
    doc["training"] = [{k: str((DATA.parent / v).resolve()) for k, v in entry.items()}
                       for entry in entries]
    doc["numTraining"] = len(entries)
    doc.pop("test", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return out


def held_out(manifest: Path, run: Path, fold: int, out: Path) -> tuple[Path, Path]:
    """A CSV manifest (image,label) of fold ``fold``'s held-out cases, and a folder linking
    their labels (what ``medseg evaluate --gt`` pairs with the predictions by case name)."""
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import fold_cases, read_splits

    cases = load_manifest(manifest).cases
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


def predict_and_score(model: str, manifest: Path, labels: Path, out: Path, device: str,
                      extra: list[str]) -> tuple[float, dict[str, float]]:
    """``medseg predict -m MODEL`` of the held-out ``manifest`` into ``out/predictions``, then
    ``medseg evaluate`` against ``labels``: (predict seconds, :func:`summarize`)."""
    seconds = medseg("predict", "-m", model, "-i", str(manifest), "-o", str(out / "predictions"),
                     "--device", device, *extra)
    medseg("evaluate", "--pred", str(out / "predictions"), "--gt", str(labels), "-o",
           str(out / "eval" / "results.csv"))
    return seconds, summarize(out / "eval" / "summary.json")


# -- nnU-Net beside medseg ----------------------------------------------------------------------
@dataclass
class Schedule:
    """nnU-Net's schedule for a budget: epochs, iterations and validation iterations per
    epoch, and what was reduced, in words."""

    epochs: int
    iterations: int
    val_iterations: int
    reduced: str


def nnunet_schedule(train_s: float, step_s: float, val_step_s: float, epoch_s: float
                    ) -> Schedule:
    """The nnU-Net schedule that fills ``train_s`` seconds.

    ``step_s``: a training step (median, warm-up excluded); ``val_step_s``: a validation step;
    ``epoch_s``: nnU-Net's own work at the end of an epoch (checkpoint, progress plot). Rule:
    when one default epoch (250 iterations + 50 validation iterations) fits, keep it and
    reduce only the epoch count (1000); otherwise at most ``MAX_REDUCED_EPOCHS`` epochs (its
    poly learning rate decays once per epoch) of at least ``MIN_ITERATIONS`` iterations,
    validation iterations at nnU-Net's 1 : 5 ratio.

    >>> s = nnunet_schedule(3600, 1.0, 0.5, 5.0)  # a default epoch: 280 s, 12 fit
    >>> s.epochs, s.iterations, s.val_iterations
    (12, 250, 50)
    >>> s = nnunet_schedule(600, 10.0, 3.0, 5.0)  # 10.6 s per iteration: 5 x 10
    >>> s.epochs, s.iterations, s.val_iterations
    (5, 10, 2)
    """
    default_epoch = NNUNET_ITERATIONS * step_s + NNUNET_VAL_ITERATIONS * val_step_s + epoch_s
    full = NNUNET_EPOCHS * default_epoch
    if train_s < step_s + val_step_s + epoch_s:
        return Schedule(1, 1, 1, f"epochs {NNUNET_EPOCHS} -> 1 of 1 iteration and 1 validation "
                        f"iteration: planning, preprocessing and the step measurement left "
                        f"{train_s / 60:.1f} min, less than one step (this overruns the budget)")
    if train_s >= default_epoch:
        epochs = min(NNUNET_EPOCHS, int(train_s // default_epoch))
        return Schedule(epochs, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS,
                        f"epochs {NNUNET_EPOCHS} -> {epochs} (nnU-Net's schedule would take "
                        f"{full / 3600:.0f} h at {step_s:.2f} s per step)")
    per_iteration = step_s + val_step_s / 5
    epochs = int(train_s // (MIN_ITERATIONS * per_iteration + epoch_s))
    epochs = max(1, min(MAX_REDUCED_EPOCHS, epochs))
    iterations = max(1, int((train_s / epochs - epoch_s) // per_iteration))
    val_iterations = max(1, round(iterations / 5))
    return Schedule(epochs, iterations, val_iterations,
                    f"epochs {NNUNET_EPOCHS} -> {epochs}, iterations per epoch "
                    f"{NNUNET_ITERATIONS} -> {iterations}, validation iterations "
                    f"{NNUNET_VAL_ITERATIONS} -> {val_iterations} (one default epoch takes "
                    f"{default_epoch / 60:.1f} min at {step_s:.2f} s per step, more than the "
                    f"{train_s / 60:.1f} min of training; its full schedule "
                    f"{full / 3600:.0f} h)")


def write_nnunet_splits(run: Path, preprocessed: Path) -> Path:
    """nnU-Net's ``splits_final.json`` = medseg's ``RUN/splits.json`` (the same form: a list
    of ``{"train", "val"}`` case ids), so nnU-Net's fold F is medseg's fold F."""
    from medseg.data.splits import read_splits, write_splits

    return write_splits(preprocessed / "splits_final.json", read_splits(run / "splits.json"))


def measure_nnunet(dataset: str, fold: int, warmup: int, timed: int, limit_s: float
                   ) -> dict[str, float]:
    """Seconds of nnU-Net's own training machinery, on an instance that is then dropped:
    ``start`` (``on_train_start``), ``step`` (median of ``timed`` training steps after
    ``warmup``, medseg's plan's counts), ``val_step`` (median of two validation steps after
    one) and ``epoch`` (``on_epoch_end``: checkpoint and progress plot).

    Steps slower than the measurement's share of the budget (``limit_s`` in all) are timed
    fewer times: as many as ``limit_s`` holds after one warm-up, at least one; a first step
    that alone exceeds ``limit_s`` is the measurement (its warm-up cost included, so the
    schedule errs short). ``warmup``, ``timed`` and ``val_timed`` in the result say what was
    timed."""
    import torch
    from nnunet_model import new_trainer

    trainer = new_trainer(dataset, NNUNET_CONFIGURATION, fold)
    t0 = time.perf_counter()
    trainer.on_train_start()
    out = {"start": time.perf_counter() - t0}
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    steps, outputs = [], []
    while len(steps) < warmup + timed:
        t0 = time.perf_counter()
        outputs.append(trainer.train_step(next(trainer.dataloader_train)))
        steps.append(time.perf_counter() - t0)
        if len(steps) == 1 and (warmup + timed) * steps[0] > limit_s:
            fits = int(limit_s // steps[0])
            warmup, timed = (0, 1) if fits < 1 else (1, max(1, fits - 1))
    out.update(step=statistics.median(steps[warmup:]), warmup=warmup, timed=timed)
    trainer.on_train_epoch_end(outputs)
    val, val_outputs = [], []
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        for _ in range(1 if warmup == 0 else 3):
            t0 = time.perf_counter()
            val_outputs.append(trainer.validation_step(next(trainer.dataloader_val)))
            val.append(time.perf_counter() - t0)
        trainer.on_validation_epoch_end(val_outputs)
    out.update(val_step=statistics.median(val[1:] or val), val_timed=len(val[1:] or val))
    t0 = time.perf_counter()
    trainer.on_epoch_end()
    out["epoch"] = time.perf_counter() - t0
    del trainer
    gc.collect()
    return out


def run_nnunet(manifest: Path, run: Path, fold: int, minutes: float, work: Path,
               held: Path, labels: Path, extra_predict: list[str]) -> dict:
    """nnU-Net v2 on fold ``fold`` within ``minutes`` of planning + training (CPU).

    Its fingerprint, planning and preprocessing (timed together as its "plan", with the
    step-time measurement: medseg's plan measures its steps too), then its default trainer
    for the minutes left less medseg's start margin, then ``medseg predict -m
    nnunet:FOLDER`` of the held-out cases. Returns the row of the table; a failure is caught
    and returned as ``{"failed": where and what}``.
    """
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT / "tests"))
    from bench_plan import nnunet_raw
    from nnunet_model import console_to, nnunet_env, plan_and_preprocess

    from medseg.planning.plan import START_MARGIN_S, TIMED_STEPS, WARMUP_STEPS

    import torch

    shutil.rmtree(work, ignore_errors=True)
    raw = nnunet_raw(manifest, work)
    dataset = raw.name
    row: dict = {"threads": torch.get_num_threads()}
    stage = "planning and preprocessing"
    with nnunet_env(work), console_to(work / "nnunet.log"):
        try:
            start = time.perf_counter()
            plan_and_preprocess(int(dataset[7:10]), [NNUNET_CONFIGURATION],
                                num_processes=max(1, torch.get_num_threads()))
            preprocessed = work / "nnUNet_preprocessed" / dataset
            write_nnunet_splits(run, preprocessed)
            stage = "measuring a training step"
            row["measured"] = measure_nnunet(dataset, fold, WARMUP_STEPS, TIMED_STEPS,
                                             MEASURE_SHARE * minutes * 60.0)
            row["plan_s"] = time.perf_counter() - start
            train_s = minutes * 60.0 - row["plan_s"] - START_MARGIN_S
            m = row["measured"]
            row["schedule"] = nnunet_schedule(train_s - m["start"] - m["epoch"], m["step"],
                                              m["val_step"], m["epoch"])
            stage = "training"
            row["train_s"] = _train_nnunet(dataset, fold, row["schedule"])
        except Exception as exc:  # noqa: BLE001 - the bench reports where nnU-Net failed
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            row["failed"] = (f"{stage}: {type(exc).__name__}: {exc} "
                             f"({Path(frame.filename).name}:{frame.lineno})")
            return row
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    row["config"] = plans["configurations"][NNUNET_CONFIGURATION]
    folder = (work / "nnUNet_results" / dataset
              / f"nnUNetTrainer__nnUNetPlans__{NNUNET_CONFIGURATION}")
    row["predict_s"], row["scores"] = predict_and_score(
        f"nnunet:{folder}", held, labels, work / "held_out", "cpu",
        ["--folds", str(fold), "--checkpoint", "final", *extra_predict])
    return row


def _train_nnunet(dataset: str, fold: int, schedule: Schedule) -> float:
    """nnU-Net's default trainer with ``schedule`` set on the instance; wall seconds."""
    from nnunet_model import new_trainer

    start = time.perf_counter()
    trainer = new_trainer(dataset, NNUNET_CONFIGURATION, fold)
    trainer.num_epochs = schedule.epochs
    trainer.num_iterations_per_epoch = schedule.iterations
    trainer.num_val_iterations_per_epoch = schedule.val_iterations
    trainer.run_training()
    return time.perf_counter() - start


def print_table(medseg_row: dict, nnunet: dict, minutes: float, fold: int, cases: int) -> None:
    """Both systems in one table: wall minutes of plan, train, predict and held-out scores."""
    def fmt(row: dict, key: str) -> str:
        return f"{row[key] / 60:.1f}" if key in row else "-"

    print(f"\nfold {fold} of {FOLDS} ({cases} cases), budget {minutes:g} min of planning + "
          "training each, CPU")
    print(f"{'system':<24}{'plan':>7}{'train':>7}{'predict':>9}{'Dice':>8}{'HD95 mm':>9}"
          f"{'HD95 vox':>10}")
    for name, row in (("medseg", medseg_row), (f"nnU-Net {NNUNET_CONFIGURATION}", nnunet)):
        scores = row.get("scores")
        tail = (f"{scores['dice']:>8.4f}{scores['hd95_mm']:>9.2f}{scores['hd95_vox']:>10.2f}"
                if scores else f"   {row.get('failed', 'not run')}")
        print(f"{name:<24}{fmt(row, 'plan_s'):>7}{fmt(row, 'train_s'):>7}"
              f"{fmt(row, 'predict_s'):>9}{tail}")
    print("(wall minutes; Dice and HD95 of the fold's held-out cases by medseg evaluate)")


def describe_nnunet(nnunet: dict) -> None:
    """What nnU-Net ran with, and what was reduced and why."""
    if "measured" in nnunet:
        m = nnunet["measured"]
        print(f"nnU-Net measured on {nnunet['threads']} threads: {m['step']:.2f} s per training "
              f"step (median of {m['timed']} after {m['warmup']} warm-up), "
              f"{m['val_step']:.2f} s per validation step (of {m['val_timed']}), "
              f"{m['epoch']:.1f} s per epoch end, {m['start']:.1f} s to start")
    if "schedule" in nnunet:
        print(f"nnU-Net reduced: {nnunet['schedule'].reduced}; so that its training takes the "
              "minutes the budget leaves after its own planning and preprocessing, as "
              "medseg's does. Unchanged: its plans (patch, batch, network), preprocessing, "
              "augmentation, loss, SGD at 0.01 with the poly schedule over the epochs it has.")
    if "config" in nnunet:
        c = nnunet["config"]
        print(f"nnU-Net plans: patch {c['patch_size'][::-1]} (x, y, z), batch "
              f"{c['batch_size']}, spacing {[round(s, 3) for s in c['spacing'][::-1]]} mm")
    print("Reduced for both: the CPU (2 cores shared), augmentation in the training process "
          "(nnUNet_n_proc_DA=0; medseg's CPU plan uses no loader workers either). "
          "Checkpoints predicted: each system's default (medseg: best.safetensors, chosen on "
          "the fold's held-out cases during training; nnU-Net: checkpoint_final.pth).")


def peer_run(args: argparse.Namespace, manifest: Path, minutes: float) -> int:
    """nnU-Net, then medseg, on fold ``args.fold`` with ``minutes`` each; one table. Both use
    the splits ``medseg train --folds 5`` makes (:func:`ensure_splits`, written first). A
    step that fails is reported in the table and the other system still runs."""
    fold = 0 if args.fold is None else args.fold
    plan, run = args.output / "plan", args.output / "run"
    extra = [] if args.tta is None else ["--tta" if args.tta else "--no-tta"]
    ensure_splits(manifest, run)
    held, labels = held_out(manifest, run, fold, args.output / "held_out.csv")
    nnunet = run_nnunet(manifest, run, fold, minutes, args.output / "nnunet", held, labels,
                        extra)
    row: dict = {}
    model, error = args.medseg_model, None
    if model is None:
        row["plan_s"], error = try_medseg("plan", str(manifest), "-o", str(plan), "--device",
                                          "cpu", "--time-budget", f"{minutes / 60:.6g}",
                                          "--no-2d")
        if error is None:
            row["train_s"], error = try_medseg(
                "train", str(plan / "plan.yaml"), "-o", str(run), "--folds", str(FOLDS),
                "--fold", str(fold), "--device", "cpu", "--no-progress")
        model = run / f"fold_{fold}" / "best.safetensors"
    else:  # trained earlier on this fold's training cases
        print(f"medseg's row: the model {model}, trained before this run (its plan and "
              "training times are not this run's)")
    if error is None:
        row["predict_s"], row["scores"] = predict_and_score(
            str(model), held, labels, args.output / "medseg", "cpu", extra)
    else:
        row["failed"] = error
    cases = len(json.loads(manifest.read_text())["training"])
    print_table(row, nnunet, minutes, fold, cases)
    describe_nnunet(nnunet)
    return 0


def ensure_splits(manifest: Path, run: Path) -> None:
    """``RUN/splits.json`` as ``medseg train --folds 5`` writes it (``kfold_splits`` of the
    training cases with the default ``train.seed``; the plan sets no other), so that nnU-Net's
    fold is medseg's; ``medseg train`` then reads it."""
    from medseg.config import TrainConfig
    from medseg.data.manifest import load_manifest
    from medseg.data.splits import cv_cases, kfold_splits, write_splits

    if not (run / "splits.json").is_file():
        ids = [c.case_id for c in cv_cases(load_manifest(manifest).cases)]
        write_splits(run / "splits.json", kfold_splits(ids, FOLDS, TrainConfig().seed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="work folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--time-budget", type=float, default=None, metavar="H",
                        help="medseg plan --time-budget H (hours)")
    parser.add_argument("--fold", type=int, default=None, help="train and score one fold only "
                        "(default with --peer: 0)")
    parser.add_argument("--peer", choices=["nnunet"], default=None,
                        help="train nnU-Net v2 beside medseg on the same fold and budget (CPU)")
    parser.add_argument("--minutes", type=float, default=None, metavar="M",
                        help="with --peer: planning + training minutes of each system "
                             "(default 60; or --time-budget H)")
    parser.add_argument("--medseg-model", type=Path, default=None, metavar="MODEL",
                        help="with --peer: score this medseg model (trained earlier on the "
                             "same fold's training cases) instead of training one here")
    parser.add_argument("--cases", type=int, default=None, metavar="N",
                        help="the first N cases only (a short check)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="with --peer: mirroring at prediction for both (default: each "
                             "model's own setting: none for medseg's CPU plan, nnU-Net's "
                             "mirroring for nnU-Net)")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent")
        return 0
    manifest = DATA if args.cases is None else subset_manifest(
        args.cases, args.output / "dataset.json")
    if args.peer is not None:
        if args.minutes is not None and args.time_budget is not None:
            raise SystemExit("give --minutes or --time-budget, not both")
        hours = args.time_budget if args.minutes is None else args.minutes / 60
        return peer_run(args, manifest, 60.0 if hours is None else hours * 60)
    return self_run(args, manifest)


def self_run(args: argparse.Namespace, manifest: Path) -> int:
    """medseg alone: plan, train (5 folds or ``--fold``), score."""
    plan, run = args.output / "plan", args.output / "run"
    times = {}
    hours = args.time_budget if args.minutes is None else args.minutes / 60
    budget = ["--time-budget", f"{hours:.6g}"] if hours else []
    times["plan"] = medseg("plan", str(manifest), "-o", str(plan), "--device", args.device,
                           *budget)
    fold = ["--fold", str(args.fold)] if args.fold is not None else []
    times["train"] = medseg("train", str(plan / "plan.yaml"), "-o", str(run), "--folds",
                            str(FOLDS), *fold, "--device", args.device, "--no-progress")
    if args.fold is None:
        scores = summarize(run / "cv" / "summary.json")
        what = "5-fold out-of-fold"
    else:
        held, labels = held_out(manifest, run, args.fold, args.output / "held_out.csv")
        times["predict"], scores = predict_and_score(
            str(run / f"fold_{args.fold}" / "best.safetensors"), held, labels, args.output,
            args.device, [])
        what = f"fold {args.fold} held-out"
    print("\nwall time per step: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items()))
    print(f"{what} ({scores['cases']} cases): Dice {scores['dice']:.4f}, HD95 "
          f"{scores['hd95_mm']:.2f} mm = {scores['hd95_vox']:.2f} voxels; "
          f"ratio to the published {REFERENCE_DICE} Dice: {scores['dice'] / REFERENCE_DICE:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
