"""Benchmark medseg.metrics against MONAI and DeepMind's surface-distance, in one run.

(a) a binary 512x512x200 case at 0.8 x 0.8 x 2.5 mm with ~500k-voxel
    structures (issue 14, item 6): HD + HD95 + ASSD by medseg (its one call that
    gives them, ``evaluate_arrays`` for the one label) vs MONAI vs surface-distance,
    against the targets >= 20x MONAI and >= 3x surface-distance; then all medseg
    metrics under each peer's convention against that peer;
(b) the real 41-label TotalSegmentator segmentation upsampled to 1.5 mm vs a
    perturbed copy: medseg vs MONAI looping over the labels.

Prints times (best of several runs), speed ratios, value agreement under the
matching convention and peak memory (tracemalloc) relative to the two input
arrays. Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.metrics import evaluate_arrays

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def peak_memory(fn) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def monai_hd_hd95_assd(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    kw = dict(include_background=True, spacing=list(spacing))
    return {
        "hd_mm": compute_hausdorff_distance(p, g, **kw).item(),
        "hd95_mm": compute_hausdorff_distance(p, g, percentile=95, **kw).item(),
        "assd_mm": compute_average_surface_distance(p, g, symmetric=True, **kw).item(),
    }


def deepmind_all(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    import surface_distance as sd

    d = sd.compute_surface_distances(gt, pred, list(spacing))
    a, b = sd.compute_average_surface_distance(d)
    ag, ap = d["surfel_areas_gt"], d["surfel_areas_pred"]
    return {
        "hd_mm": sd.compute_robust_hausdorff(d, 100),
        "hd95_mm": sd.compute_robust_hausdorff(d, 95),
        "avd_mm": max(a, b),
        "assd_mm": (np.sum(d["distances_gt_to_pred"] * ag) + np.sum(d["distances_pred_to_gt"] * ap))
        / (np.sum(ag) + np.sum(ap)),
        "nsd": sd.compute_surface_dice_at_tolerance(d, 1.0),
    }


def deepmind_hd_hd95_assd(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    """surface-distance's HD, HD95 and ASSD (area-weighted over both surfaces)."""
    import surface_distance as sd

    d = sd.compute_surface_distances(gt, pred, list(spacing))
    ag, ap = d["surfel_areas_gt"], d["surfel_areas_pred"]
    assd = (np.sum(d["distances_gt_to_pred"] * ag) + np.sum(d["distances_pred_to_gt"] * ap)) / (
        np.sum(ag) + np.sum(ap))
    return {"hd_mm": sd.compute_robust_hausdorff(d, 100),
            "hd95_mm": sd.compute_robust_hausdorff(d, 95), "assd_mm": float(assd)}


def headline(pred: np.ndarray, gt: np.ndarray, spacing) -> None:
    """Issue 14, item 6: HD + HD95 + ASSD, medseg against both peers in the same run."""
    keys = ("hd_mm", "hd95_mm", "assd_mm")
    t_med, med = timed(lambda: evaluate_arrays(pred, gt, spacing, labels=[1])[1], repeat=7)
    t_monai, _ = timed(lambda: monai_hd_hd95_assd(pred, gt, spacing), repeat=2)
    t_sd, _ = timed(lambda: deepmind_hd_hd95_assd(pred.astype(bool), gt.astype(bool), spacing),
                    repeat=3)
    print(f"    HD + HD95 + ASSD: medseg {t_med:.3f} s, MONAI {t_monai:.3f} s "
          f"(ratio {t_monai / t_med:.1f}x, >= 20x target), surface-distance {t_sd:.3f} s "
          f"(ratio {t_sd / t_med:.1f}x, >= 3x target)")
    print("    medseg values: " + ", ".join(f"{k} {med[k]:.4f}" for k in keys))


def agreement(ours: dict, theirs: dict) -> str:
    rel = max(abs(ours[k] - v) / max(abs(v), 1e-12) for k, v in theirs.items())
    return f"max relative difference {rel:.2e} over {', '.join(theirs)}"


def case_a() -> None:
    shape, spacing = (512, 512, 200), (0.8, 0.8, 2.5)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre, radii = (256, 240, 100), (72.0, 66.0, 25.0)  # voxels; ~500k voxels
    gt = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    rng = np.random.default_rng(0)
    noise = ndimage.zoom(rng.standard_normal((32, 32, 13)), np.array(shape) / (32, 32, 13), order=1)
    pred = sum(((g - c - s) / r) ** 2 for g, c, s, r in zip(grid, centre, (3, -2, 1), radii)) <= 1.0 + 0.08 * noise[
        : shape[0], : shape[1], : shape[2]
    ]
    pred, gt = pred.astype(np.uint8), gt.astype(np.uint8)
    print(f"(a) binary {shape} at {spacing} mm: gt {int(gt.sum())} voxels, pred {int(pred.sum())} voxels")
    headline(pred, gt, spacing)
    t_med, med = timed(lambda: evaluate_arrays(pred, gt, spacing)[1], repeat=3)
    t_mc, med_monai = timed(lambda: evaluate_arrays(pred, gt, spacing, convention="monai")[1], repeat=3)
    t_dc, med_dm = timed(lambda: evaluate_arrays(pred, gt, spacing, convention="deepmind")[1], repeat=3)
    t_monai, monai = timed(lambda: monai_hd_hd95_assd(pred, gt, spacing))
    t_sd, dm = timed(lambda: deepmind_all(pred.astype(bool), gt.astype(bool), spacing))
    print(f"    medseg (all 10 metrics, convention medseg)  {t_med:8.3f} s")
    print(f"    medseg convention=monai                     {t_mc:8.3f} s")
    print(f"    medseg convention=deepmind                  {t_dc:8.3f} s")
    print(f"    MONAI HD + HD95 + ASSD                      {t_monai:8.3f} s   ratio {t_monai / t_mc:6.1f}x")
    print(f"    surface-distance (dist, HD, HD95, ASD, NSD) {t_sd:8.3f} s   ratio {t_sd / t_dc:6.1f}x")
    print(f"    values medseg(monai) vs MONAI: {agreement(med_monai, monai)}")
    print(f"    values medseg(deepmind) vs surface-distance: {agreement(med_dm, dm)}")
    print(f"    medseg: HD {med['hd_mm']:.3f} HD95 {med['hd95_mm']:.3f} ASSD {med['assd_mm']:.4f} mm, "
          f"Dice {med['dice']:.4f}, NSD@1mm {med['nsd']:.4f}")
    report_memory(pred, gt, spacing)


def report_memory(pred, gt, spacing, labels=None) -> None:
    inputs = pred.nbytes + gt.nbytes
    for convention in ("medseg", "deepmind"):
        peak = peak_memory(lambda c=convention: evaluate_arrays(pred, gt, spacing, labels, convention=c))
        print(f"    peak memory ({convention}): {peak / 2**20:.1f} MiB = {peak / inputs:.2f}x the two "
              f"input arrays ({inputs / 2**20:.1f} MiB)")


def case_b() -> None:
    path = ROOT / ".." / "shared" / "data" / "totalsegmentator" / "seg.nii.gz"
    if not path.exists():
        print(f"(b) skipped: {path} not found")
        return
    import nibabel as nib

    img = nib.load(str(path))
    seg = np.asarray(img.dataobj).astype(np.uint8)
    zoom = np.array(img.header.get_zooms()[:3], dtype=float) / 1.5
    gt = ndimage.zoom(seg, zoom, order=0)
    spacing = (1.5, 1.5, 1.5)
    labels = [int(v) for v in np.unique(gt)[1:]]
    pred = gt.copy()
    for i, label in enumerate(labels):
        mask = gt == label
        if i % 3 == 0:
            pred[ndimage.binary_dilation(mask, iterations=2) & (gt == 0)] = label
        elif i % 3 == 1 and ndimage.binary_erosion(mask, iterations=2).any():
            pred[mask & ~ndimage.binary_erosion(mask, iterations=2)] = 0
    print(f"(b) real segmentation at 1.5 mm {gt.shape}, {len(labels)} labels, perturbed copy")
    t_med, med = timed(lambda: evaluate_arrays(pred, gt, spacing), repeat=3)
    t_mc, ours = timed(lambda: evaluate_arrays(pred, gt, spacing, convention="monai"), repeat=3)

    def monai_loop():
        return {label: monai_hd_hd95_assd(pred == label, gt == label, spacing) for label in labels}

    t_monai, monai = timed(monai_loop)
    worst = max(
        abs(ours[k][m] - v) / max(abs(v), 1e-12) for k, vals in monai.items() for m, v in vals.items()
    )
    print(f"    medseg (all metrics, all labels)            {t_med:8.3f} s")
    print(f"    medseg convention=monai                     {t_mc:8.3f} s")
    print(f"    MONAI HD + HD95 + ASSD, loop over labels    {t_monai:8.3f} s   ratio {t_monai / t_mc:6.1f}x")
    print(f"    values medseg(monai) vs MONAI: max relative difference {worst:.2e} over "
          f"{len(labels)} labels x (HD, HD95, ASSD)")
    report_memory(pred, gt, spacing)


if __name__ == "__main__":
    case_a()
    case_b()
