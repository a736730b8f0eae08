"""The folders of a report's overlays, and reading a case's volume from them.

A case's files are found by :func:`medseg.io.cases.find_case_file`, over the one
extension table of :mod:`medseg.io.formats` (``.nhdr`` and ``.mhd`` included).
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.errors import ImageReadError, UsageError
from medseg.volume import Volume

__all__ = ["check_dirs", "read_case_volume"]


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
