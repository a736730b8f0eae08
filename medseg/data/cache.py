"""Preprocessing cache: each case preprocessed once, then memory-mapped by every epoch and run.

For each case the cache folder ``<cache_dir>/<case_id>-<key>/`` holds

* ``image.npy`` -- float32 (C, x, y, z), after ``Preprocessing.apply``;
* ``label.npy`` -- uint8, or uint16 above label 255 (:func:`medseg.argmax.label_dtype`),
  (x, y, z) on the same grid (absent for test cases);
* ``fg_indices.npy`` -- flat voxel indices (C order into (x, y, z)) of every
  foreground label, grouped by label value, at most ``max_per_class`` per label
  (a seeded subsample beyond that, as nnU-Net keeps 10 000 per class);
* ``meta.json`` -- the key, shape, affine of the preprocessed grid, per-label
  ``[start, stop)`` ranges into ``fg_indices.npy``, the image minimum per channel
  (the padding value) -- written last, so its presence marks a complete entry.

``key`` hashes the preprocessing config with each source file's resolved path,
size and modification time: editing the config or touching a source file gives
a new key and a rebuild; otherwise the entry is reused. Arrays are uncompressed
``.npy`` opened with ``np.load(mmap_mode="r")``, so a patch reads only its bytes.
Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.manifest import read_case
from medseg.errors import DataError
from medseg.io.atomic import atomic_path, atomic_write_text
from medseg.io.cases import Case
from medseg.io.labels import as_label_map

__all__ = ["CachedCase", "cache_key", "cache_case", "build_cache", "foreground_indices"]

CACHE_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class CachedCase:
    """A preprocessed case on disk; arrays are opened lazily as read-only memory maps.

    ``classes`` maps each foreground label present to its ``[start, stop)`` range
    in :attr:`fg_indices`. ``pad_value`` holds the per-channel minimum of the image.
    """

    case_id: str
    folder: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    classes: dict[int, tuple[int, int]]
    pad_value: list[float]
    has_label: bool = True
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> CachedCase:
        """Open an entry written by :func:`cache_case` (reads only ``meta.json``)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return cls(
            case_id=meta["case_id"],
            folder=folder,
            shape=tuple(meta["shape"]),
            affine=np.asarray(meta["affine"], dtype=np.float64),
            classes={int(k): (int(a), int(b)) for k, (a, b) in meta["classes"].items()},
            pad_value=[float(v) for v in meta["pad_value"]],
            has_label=bool(meta["has_label"]),
        )

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:  # opened per process (DataLoader workers fork or spawn)
            self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # never pickle memory maps (that would copy the data)
        return state

    @property
    def image(self) -> np.ndarray:
        """(C, x, y, z) float32 memory map."""
        return self._array("image")

    @property
    def label(self) -> np.ndarray:
        """(x, y, z) integer memory map."""
        if not self.has_label:
            raise DataError(f"case {self.case_id!r} has no label", self.folder)
        return self._array("label")

    @property
    def fg_indices(self) -> np.ndarray:
        """Flat indices into (x, y, z) of the foreground voxels, grouped by label."""
        return self._array("fg_indices")

    def indices_of(self, value: int) -> np.ndarray:
        """Flat voxel indices of label ``value`` (empty when absent)."""
        start, stop = self.classes.get(int(value), (0, 0))
        return self.fg_indices[start:stop]


def cache_key(case: Case, preprocessing_config: dict[str, Any], max_per_class: int) -> str:
    """Hex digest of the preprocessing config, the source files' path/size/mtime and the
    DICOM stacks the case names."""
    sources = []
    for path in [*case.images, *([case.label] if case.label else [])]:
        stat = Path(path).stat()
        sources.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    doc = {"v": CACHE_VERSION, "pre": preprocessing_config, "src": sources, "max": max_per_class}
    if case.stack:  # the DICOM stacks read (absent otherwise, so older keys stay valid)
        doc["stack"] = [str(s) for s in case.stack]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def foreground_indices(label: np.ndarray, max_per_class: int, seed: int = 0
                       ) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """Flat indices of every label > 0 grouped by value, each group capped at ``max_per_class``.

    Returns ``(indices, ranges)`` with ``indices[ranges[v][0]:ranges[v][1]]`` the
    sorted flat (C order) indices of label ``v``. One pass: a stable sort of the
    non-zero voxels by value.
    """
    flat = np.asarray(label).reshape(-1)
    nonzero = np.flatnonzero(flat)
    dtype = np.int32 if flat.size < 2**31 else np.int64
    if nonzero.size == 0:
        return np.zeros(0, dtype=dtype), {}
    values = flat[nonzero]
    order = np.argsort(values, kind="stable")
    nonzero, values = nonzero[order], values[order]
    uniq, starts = np.unique(values, return_index=True)
    stops = np.append(starts[1:], values.size)
    rng = np.random.default_rng(seed)
    parts, ranges, offset = [], {}, 0
    for value, a, b in zip(uniq.tolist(), starts.tolist(), stops.tolist()):
        group = nonzero[a:b]
        if group.size > max_per_class:
            group = np.sort(rng.choice(group, size=max_per_class, replace=False))
        parts.append(group.astype(dtype))
        ranges[int(value)] = (offset, offset + group.size)
        offset += group.size
    return np.concatenate(parts), ranges


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)


def cache_case(case: Case, preprocessing: Any, cache_dir: str | os.PathLike,
               max_per_class: int = 200_000) -> CachedCase:
    """Preprocess ``case`` into ``cache_dir`` unless an entry with the same key exists.

    Parameters
    ----------
    case : a manifest case (image file(s) and label).
    preprocessing : a ``medseg.transforms.Preprocessing``.
    cache_dir : folder of the cache (created when missing).
    max_per_class : cap on the stored foreground indices per label.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(case, preprocessing.to_config(), max_per_class)
    folder = cache_dir / f"{_safe(case.case_id)}-{key}"
    if (folder / "meta.json").is_file():
        return CachedCase.open(folder)
    folder.mkdir(exist_ok=True)
    image, label = read_case(case)
    label = None if label is None else as_label_map(label, case.label)
    prepared = preprocessing.apply(image, label)
    image_t, label_t = prepared.image, prepared.label
    arr = np.asarray(image_t.array, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    _save_npy(folder / "image.npy", arr)
    classes: dict[int, tuple[int, int]] = {}
    if label_t is not None:
        lab = label_t.array
        _save_npy(folder / "label.npy", lab)
        indices, classes = foreground_indices(lab, max_per_class, seed=int(key[:8], 16))
        _save_npy(folder / "fg_indices.npy", indices)
    meta = {
        "case_id": case.case_id,
        "key": key,
        "shape": list(arr.shape[1:]),
        "affine": np.asarray(image_t.affine).tolist(),
        "classes": {str(k): list(v) for k, v in classes.items()},
        "pad_value": [float(c.min()) for c in arr],
        "has_label": label_t is not None,
        "sources": [str(p) for p in [*case.images, *([case.label] if case.label else [])]],
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))
    return CachedCase.open(folder)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def build_cache(cases: Sequence[Case], preprocessing: Any, cache_dir: str | os.PathLike,
                max_per_class: int = 200_000, progress: bool = False) -> list[CachedCase]:
    """Cache every case (reusing valid entries); a tqdm bar when ``progress``."""
    from tqdm.auto import tqdm

    out = []
    for case in tqdm(cases, desc="cache", unit="case", disable=not progress, leave=False):
        out.append(cache_case(case, preprocessing, cache_dir, max_per_class))
    log.debug("cache %s: %d case(s) ready", cache_dir, len(out))
    return out
