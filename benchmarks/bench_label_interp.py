"""Label maps back from a coarser network grid: interpolated probabilities vs nearest labels.

A ``unet3d`` trained on phantoms at 4.5 x 4.5 x 5.5 mm (``pipelines/phantom_quick.yaml``
with ``preprocessing.spacing_mm`` set to that spacing, a few minutes on 2 cores; or
``--checkpoint`` of such a run) segments four phantoms of the same field of view at
1.5 x 1.5 x 1.83 mm. Each prediction goes back to 1.5 mm two ways:

* ``linear`` (medseg's default, nnU-Net's way): class probabilities interpolated
  linearly, argmax slab by slab (``medseg.transforms.resample_argmax``);
* ``nearest`` (the label map resampled by nearest neighbour, as TotalSegmentator and
  MONAI's ``Invertd`` on labels do): ``label_interp="nearest"``.

Prints mean Dice, HD95 and ASSD per label against the 1.5 mm phantom labels (medseg
convention), and the seconds for the four predictions.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_label_interp.py [--checkpoint CKPT]
[--minutes 4]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NETWORK_SPACING = [4.5, 4.5, 5.5]  # mm, that of phantom_quick's training phantoms
FINE = (1.5, 1.5, 5.5 / 3)  # mm, 3x finer on every axis
SHAPE = (192, 192, 144)  # the training phantoms' 64 x 64 x 48 field of view at FINE


def train_checkpoint(run_dir: Path, minutes: float) -> Path:
    from medseg.config import load_config
    from medseg.runtime import Runtime
    from medseg.training.loop import TrainOptions, train

    cfg = load_config(REPO / "pipelines" / "phantom_quick.yaml",
                      [f"preprocessing.spacing_mm={NETWORK_SPACING}"])
    t0 = time.perf_counter()
    result = train(cfg, run_dir, TrainOptions(progress=False, max_minutes=minutes),
                   Runtime.resolve("cpu", cfg.train.amp))
    print(f"trained {run_dir} in {time.perf_counter() - t0:.0f} s")
    return Path(result.run_dir) / "best.safetensors"


def score(checkpoint: Path, label_interp: str) -> tuple[np.ndarray, float]:
    """(metric, label) means over the four cases (rows dice, hd95, assd), and the seconds."""
    from medseg.data.phantom import make_phantom
    from medseg.inference.predict import PredictOptions, predict_case
    from medseg.metrics import evaluate_arrays
    from medseg.runtime import Runtime

    rows, seconds = [], 0.0
    for seed in range(100, 104):
        case = make_phantom(SHAPE, FINE, seed=seed, noise_hu=20)
        t0 = time.perf_counter()
        labels = predict_case(checkpoint, case.image, PredictOptions(label_interp=label_interp),
                              Runtime.resolve("cpu")).labels.array
        seconds += time.perf_counter() - t0
        result = evaluate_arrays(labels, case.label.array, FINE)
        rows.append([[result[k][m] for k in sorted(result)]
                     for m in ("dice", "hd95_mm", "assd_mm")])
    return np.mean(rows, axis=0), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a run of phantom_quick at 4.5 mm")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or train_checkpoint(Path(tmp) / "run", args.minutes)
        results = {mode: score(checkpoint, mode) for mode in ("linear", "nearest")}
    for mode, (means, seconds) in results.items():
        dice, hd95, assd = means
        print(f"{mode:8s} Dice {np.round(dice, 4).tolist()} mean {dice.mean():.4f} | "
              f"HD95 mm {np.round(hd95, 2).tolist()} mean {hd95.mean():.2f} | "
              f"ASSD mm mean {assd.mean():.3f} | {seconds:.1f} s for 4 cases")
    (lin, t_lin), (near, t_near) = results["linear"], results["nearest"]
    print(f"linear vs nearest: mean Dice {lin[0].mean() - near[0].mean():+.4f}, mean HD95 "
          f"{lin[1].mean() / near[1].mean():.2f}x, time {t_lin / t_near:.2f}x")


if __name__ == "__main__":
    main()
