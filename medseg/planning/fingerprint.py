"""The dataset fingerprint: what a plan needs to know about the training cases, read once.

Every training case (``train`` and ``val`` splits: the cases with labels) is read once,
reoriented to RAS (the plan's orientation, so spacing and shape are in that axis order,
(x, y, z)), and summarised:

* per case: spacing (mm) and shape (voxels);
* per channel: the 0.5 / 99.5 percentiles, mean and standard deviation of the intensities
  inside the foreground (label > 0), from a seeded sample of at most ``samples_per_case``
  foreground voxels per case (bounded memory, as nnU-Net samples);
* per class: the mean share of a case's voxels it covers, the median number of connected
  components (26-connectivity) per case and the median component size in mL.

The result is a :class:`Fingerprint`, written as ``fingerprint.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medseg.errors import DataError
from medseg.volume import Volume

__all__ = ["CaseShape", "ChannelStats", "ClassStats", "Fingerprint", "compute_fingerprint"]

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 10_000
"""Foreground voxels sampled per case and channel for the intensity statistics."""


@dataclass(frozen=True)
class CaseShape:
    """Spacing (mm) and shape (voxels) of one case, (x, y, z) in RAS order."""

    case_id: str
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class ChannelStats:
    """Foreground intensities of one channel over the sampled voxels of every case."""

    name: str
    p00_5: float
    p99_5: float
    mean: float
    std: float


@dataclass(frozen=True)
class ClassStats:
    """One label: mean voxel share per case, median component count and size (mL)."""

    label: int
    name: str
    voxel_fraction: float
    components_median: float
    component_ml_median: float


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`compute_fingerprint` measured (see the module docstring)."""

    manifest: str
    channel_names: tuple[str, ...]
    label_names: dict[int, str]
    cases: tuple[CaseShape, ...]
    channels: tuple[ChannelStats, ...]
    classes: tuple[ClassStats, ...]

    @property
    def spacings_mm(self) -> np.ndarray:
        """(N, 3) spacing of every case in mm."""
        return np.array([c.spacing_mm for c in self.cases], dtype=np.float64)

    @property
    def median_spacing_mm(self) -> tuple[float, float, float]:
        """Median spacing per axis (x, y, z), mm."""
        return tuple(float(v) for v in np.median(self.spacings_mm, axis=0))  # type: ignore

    @property
    def median_shape(self) -> tuple[float, float, float]:
        """Median shape per axis (x, y, z), voxels."""
        shapes = np.array([c.shape for c in self.cases], dtype=np.float64)
        return tuple(float(v) for v in np.median(shapes, axis=0))  # type: ignore

    @property
    def anisotropy(self) -> float:
        """Largest over smallest median spacing."""
        spacing = self.median_spacing_mm
        return max(spacing) / min(spacing)

    @property
    def is_ct(self) -> bool:
        """True when the manifest names every channel CT (``modality`` / ``channel_names``)."""
        return all(name.strip().upper() == "CT" for name in self.channel_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the medians and the anisotropy spelled out."""
        out = asdict(self)
        out["label_names"] = {str(k): v for k, v in self.label_names.items()}
        out.update(median_spacing_mm=list(self.median_spacing_mm),
                   median_shape=list(self.median_shape), anisotropy=self.anisotropy,
                   modality="CT" if self.is_ct else "other")
        return out


def compute_fingerprint(manifest: Any, seed: int = 0, samples_per_case: int = SAMPLES_PER_CASE,
                        progress: bool = False) -> Fingerprint:
    """Fingerprint the training cases of ``manifest`` (a :class:`medseg.data.Manifest`).

    Parameters
    ----------
    manifest : the loaded manifest; its ``train`` and ``val`` cases are read.
    seed : seeds the foreground sample of case ``i`` (``seed + i``).
    samples_per_case : foreground voxels sampled per case for the intensity statistics.
    progress : show a tqdm bar over the cases.

    Raises
    ------
    DataError : no training cases; a case whose channel count differs from the first
        case's; a label value the manifest's ``labels`` do not list.
    """
    from tqdm.auto import tqdm

    cases = [c for c in manifest.cases if c.split != "test" and c.label is not None]
    if not cases:
        raise DataError("the manifest lists no training cases with labels", manifest.path)
    shapes, samples, per_class = [], [], {}
    n_channels = None
    for i, case in enumerate(tqdm(cases, desc="fingerprint", unit="case", disable=not progress)):
        image, label = _read_ras(case)
        n_channels = _check_channels(case, image, n_channels, cases[0])
        values = _check_labels(case, label, manifest)
        shapes.append(CaseShape(case.case_id, tuple(float(s) for s in image.spacing_mm),
                                tuple(int(s) for s in image.spatial_shape)))
        samples.append(_sample_foreground(image.array, label.array > 0, samples_per_case,
                                          seed + i))
        for value in values:
            per_class.setdefault(value, []).append(_class_stats(label, value))
    names = dict(manifest.label_names) or {v: f"label_{v}" for v in per_class}
    names = {k: v for k, v in names.items() if k != 0}
    return Fingerprint(str(manifest.path), _channel_names(manifest, n_channels), names,
                       tuple(shapes), _channel_stats(samples, manifest, n_channels),
                       _classes(names, per_class, len(cases)))


def _read_ras(case) -> tuple[Volume, Volume]:
    from medseg.data.manifest import read_case
    from medseg.transforms.orientation import reorient

    image, label = read_case(case)
    return reorient(image, "RAS"), reorient(label, "RAS")


def _check_channels(case, image: Volume, expected: int | None, first) -> int:
    count = int(image.shape[0])
    if expected is not None and count != expected:
        raise DataError(f"case {case.case_id} has {count} image channel(s) but the first "
                        f"training case {first.case_id} has {expected}: give every case the "
                        "same channels, in the same order", case.images[0])
    return count


def _check_labels(case, label: Volume, manifest) -> list[int]:
    values = [int(v) for v in np.unique(np.asarray(label.array)) if int(v) != 0]
    known = manifest.label_names
    unknown = [v for v in values if known and v not in known]
    if unknown:
        raise DataError(f"case {case.case_id} has label values {unknown} that the manifest's "
                        f"labels ({', '.join(str(k) for k in known)}) do not list: add them to "
                        f"'labels' in {manifest.path.name} or remap the label file", case.label)
    return values


def _sample_foreground(array: np.ndarray, mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(C, m) intensities of at most ``n`` foreground voxels, drawn without replacement."""
    index = np.flatnonzero(mask)
    if index.size > n:
        index = np.sort(np.random.default_rng(seed).choice(index, n, replace=False))
    flat = array.reshape(array.shape[0], -1)
    return flat[:, index].astype(np.float64)


def _class_stats(label: Volume, value: int) -> tuple[float, list[float]]:
    """(share of the case's voxels, sizes of the connected components in mL)."""
    from scipy import ndimage

    mask = np.asarray(label.array) == value
    components, count = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    sizes = np.bincount(components.ravel())[1:] * label.voxel_volume_ml
    return float(mask.mean()), [float(s) for s in sizes[:count]]


def _channel_names(manifest, n_channels: int | None) -> tuple[str, ...]:
    names = list(manifest.channel_names)
    if len(names) != n_channels:
        names = names[:1] * int(n_channels or 1) if len(names) == 1 else \
            [f"channel_{c}" for c in range(int(n_channels or 1))]
    return tuple(names)


def _channel_stats(samples: Sequence[np.ndarray], manifest, n_channels: int | None
                   ) -> tuple[ChannelStats, ...]:
    joined = np.concatenate(samples, axis=1)
    if joined.shape[1] == 0:
        raise DataError("no training case has any foreground (label > 0) voxel",
                        manifest.path)
    names = _channel_names(manifest, n_channels)
    out = []
    for c, name in enumerate(names):
        lo, hi = np.percentile(joined[c], [0.5, 99.5])
        out.append(ChannelStats(name, float(lo), float(hi), float(joined[c].mean()),
                                float(joined[c].std())))
    return tuple(out)


def _classes(names: dict[int, str], per_class: dict[int, list], n_cases: int
             ) -> tuple[ClassStats, ...]:
    out = []
    for value, name in sorted(names.items()):
        found = per_class.get(value, [])
        fractions = [f for f, _ in found] + [0.0] * (n_cases - len(found))
        counts = [len(s) for _, s in found] + [0] * (n_cases - len(found))
        sizes = [s for _, case_sizes in found for s in case_sizes]
        out.append(ClassStats(value, name, float(np.mean(fractions)), float(np.median(counts)),
                              float(np.median(sizes)) if sizes else 0.0))
    return tuple(out)
