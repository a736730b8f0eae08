"""Find a case's image, prediction and ground truth files by the case name.

A case ``abc`` is ``abc`` + one of :data:`EXTENSIONS` in its folder. Image
folders laid out for nnU-Net (``abc_0000.nii.gz``) are found as well.
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import ImageReadError, UsageError
from medseg.volume import Volume

__all__ = ["EXTENSIONS", "find_case_file", "check_dirs", "read_case_volume"]

EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


def find_case_file(folder: str | os.PathLike, case: str, allow_channel: bool = False) -> Path:
    """The file of ``case`` in ``folder``; raise :class:`ImageReadError` listing what was tried."""
    folder = Path(folder)
    stems = [case, f"{case}_0000"] if allow_channel else [case]
    for stem in stems:
        for ext in EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    tried = ", ".join(f"{stems[0]}{ext}" for ext in EXTENSIONS)
    raise ImageReadError(f"no file for case {case!r} (tried {tried})", folder)


def check_dirs(
    images_dir: str | os.PathLike | None,
    pred_dir: str | os.PathLike | None,
    gt_dir: str | os.PathLike | None,
) -> bool:
    """True when overlays can be drawn; raise if the folders given do not fit together."""
    if (pred_dir is None) != (gt_dir is None):
        raise UsageError("overlays need both pred_dir and gt_dir (got only one of them)")
    if images_dir is not None and pred_dir is None:
        raise UsageError("images_dir needs pred_dir and gt_dir to draw overlays")
    for folder in (images_dir, pred_dir, gt_dir):
        if folder is not None and not Path(folder).is_dir():
            raise ImageReadError("folder does not exist", folder)
    return pred_dir is not None


def read_case_volume(path: Path) -> Volume:
    """Read one volume with :func:`medseg.io.read_volume`, remembering its path in ``meta``."""
    from medseg.io import read_volume

    volume = read_volume(path)
    volume.meta.setdefault("path", str(path))
    return volume
