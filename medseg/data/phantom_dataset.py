"""A dataset of generated phantoms on disk: NIfTI files and their MSD ``dataset.json``.

The one writer of phantom datasets, used by training (``data.phantom`` in a
pipeline config) and by the demo (which adds test cases)::

    dataset.json            training / validation / test entries, label names, settings
    imagesTr/, labelsTr/    phantom_000.nii.gz ... (training, then validation cases)
    imagesTs/, labelsTs/    the test cases and their ground truth (n_test > 0)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PhantomConfig", "write_phantom_dataset", "remove_stale_phantoms"]

log = logging.getLogger(__name__)


@dataclass
class PhantomConfig:
    """Generate synthetic CT phantoms (``medseg.data.phantom``) instead of reading a manifest:
    the ``data.phantom`` keys of a pipeline config (:mod:`medseg.config` reads them).

    ``shape`` in voxels (x, y, z), ``spacing_mm`` in mm; case ``i`` uses seed ``seed + i``.
    """

    n_train: int = 8
    n_val: int = 2
    shape: list[int] = field(default_factory=lambda: [64, 64, 48])
    spacing_mm: list[float] = field(default_factory=lambda: [4.5, 4.5, 5.5])
    seed: int = 0
    noise_hu: float = 20.0


def write_phantom_dataset(cfg: PhantomConfig, folder: str | Path, n_test: int = 0,
                          progress: bool = False) -> Path:
    """Generate ``n_train + n_val + n_test`` phantoms and their ``dataset.json`` in ``folder``.

    Parameters
    ----------
    cfg : shape (x, y, z voxels), spacing (mm), noise, seed and the numbers of
        training and validation cases (:class:`PhantomConfig`).
    folder : the dataset folder (created when missing).
    n_test : test cases, generated after the others (images in ``imagesTs``,
        ground truth in ``labelsTs``).
    progress : show a tqdm bar.

    Returns
    -------
    The path of ``dataset.json``.

    Notes
    -----
    Case ``i`` is ``phantom_{i:03d}`` with seed ``cfg.seed + i``: first the
    ``n_train`` training cases, then the ``n_val`` validation and the ``n_test``
    test cases. A folder whose ``dataset.json`` records the same settings is
    reused as is; otherwise the cases are rewritten, test files of an earlier
    call that are no longer listed are removed, and ``dataset.json`` is
    written last (so a complete folder is recognised).
    """
    folder = Path(folder)
    settings = {**dataclasses.asdict(cfg), "n_test": int(n_test)}
    manifest = folder / "dataset.json"
    if _same_settings(manifest, settings):
        log.info("reusing the phantoms in %s", folder)
        return manifest
    splits = _splits(cfg.n_train, cfg.n_val, int(n_test))
    for part in ("imagesTs", "labelsTs"):
        remove_stale_phantoms(folder / part, splits["test"][1])
    _write_cases(cfg, folder, splits, progress)
    from medseg.io.atomic import atomic_write_text

    atomic_write_text(manifest, json.dumps(_manifest_doc(splits, settings), indent=1))
    log.info("wrote %d training, %d validation and %d test phantoms to %s",
             cfg.n_train, cfg.n_val, n_test, folder)
    return manifest


def remove_stale_phantoms(folder: Path, keep: Sequence[str]) -> None:
    """Delete the ``phantom_*.nii.gz`` files of ``folder`` whose case is not in ``keep``."""
    wanted = {f"{name}.nii.gz" for name in keep}
    for path in folder.glob("phantom_*.nii.gz"):
        if path.name not in wanted:
            path.unlink()


def _splits(n_train: int, n_val: int, n_test: int) -> dict[str, tuple[str, list[str]]]:
    """``{manifest key: (folder suffix, case names)}``; case ``i`` is ``phantom_{i:03d}``."""
    names = [f"phantom_{i:03d}" for i in range(n_train + n_val + n_test)]
    return {"training": ("Tr", names[:n_train]),
            "validation": ("Tr", names[n_train:n_train + n_val]),
            "test": ("Ts", names[n_train + n_val:])}


def _write_cases(cfg: PhantomConfig, folder: Path, splits: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    from medseg.data.phantom import make_phantom
    from medseg.io import write_volume

    jobs = [(suffix, name) for suffix, names in splits.values() for name in names]
    for i, (suffix, name) in enumerate(tqdm(jobs, desc="phantoms", unit="case",
                                            disable=not progress, leave=False)):
        case = make_phantom(cfg.shape, cfg.spacing_mm, seed=cfg.seed + i, noise_hu=cfg.noise_hu)
        write_volume(case.image, folder / f"images{suffix}" / f"{name}.nii.gz")
        write_volume(case.label, folder / f"labels{suffix}" / f"{name}.nii.gz")


def _manifest_doc(splits: dict, settings: dict[str, Any]) -> dict[str, Any]:
    from medseg.data.phantom import LABEL_NAMES

    entries = {key: [{"image": f"./images{sfx}/{n}.nii.gz", "label": f"./labels{sfx}/{n}.nii.gz"}
                     for n in names] for key, (sfx, names) in splits.items()}
    return {"name": "medseg phantoms", "modality": {"0": "CT"},
            "labels": {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}},
            **entries, "phantom_settings": settings}


def _same_settings(manifest: Path, settings: dict[str, Any]) -> bool:
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("phantom_settings") == settings
    except (OSError, ValueError, AttributeError):
        return False
