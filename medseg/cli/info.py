"""``medseg info PATH``: geometry, intensities and labels of an image."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from medseg.cli._options import add_dicom_input

if TYPE_CHECKING:
    import numpy as np

    from medseg.volume import Volume

HELP = "show shape, spacing, orientation, intensities and labels of an image"
#: Integer images with at most this many distinct values are listed as labels.
MAX_LABELS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="image file (.nii.gz, .nrrd, .mha, ...), DICOM folder, or "
                                     "a DICOM-SEG / RTSTRUCT file")
    add_dicom_input(parser)


def run(args: argparse.Namespace) -> int:
    from medseg.io import read_volume
    from medseg.io.dicom.labels import dicom_label_kind
    from medseg.io.formats import format_of

    kind = dicom_label_kind(args.path)
    if kind is not None:
        print(describe_dicom_labels(args.path, kind))
        return 0
    if args.stack is None and os.path.exists(args.path) and format_of(args.path) == "dicom":
        from medseg.io.dicom.image import list_stacks
        from medseg.io.dicom.stacks import own_stack

        stacks = list_stacks(args.path, args.series)
        if len(stacks) > 1 and own_stack(stacks, args.path) is None:
            print(describe_stacks(args.path, args.series, args.tilt))
            return 0
    print(describe(read_volume(args.path, series=args.series, tilt=args.tilt, stack=args.stack),
                   args.path))
    return 0


def describe_stacks(path: str | os.PathLike, series: str | None, tilt: bool = True) -> str:
    """The image stacks of a DICOM input, one line each: number, what distinguishes it,
    shape (x, y, z), spacing (mm) and the names ``--stack`` takes."""
    from medseg.io.dicom.image import read_dicom_stacks

    read = read_dicom_stacks(path, series, tilt=tilt)
    lines = [f"{os.fspath(path)}",
             f"  stacks       {len(read)}: pick one with --stack K or --stack NAME; number, "
             "label, shape (x, y, z), spacing mm, names"]
    width = max(len(info.label) for info, _ in read)
    for info, volume in read:
        shape = " x ".join(map(str, volume.shape))
        spacing = " x ".join(f"{s:.4g}" for s in volume.spacing_mm)
        names = ", ".join(n for n in info.names if not n.isdigit())
        lines.append(f"    {info.index:>2}  {info.label:<{width}}  {shape:<14} {spacing:<16} "
                     f"{names}")
    return "\n".join(lines)


def describe_dicom_labels(path: str | os.PathLike, kind: str) -> str:
    """Segments of a DICOM-SEG (``kind="seg"``) or ROIs of an RTSTRUCT, one line each.

    Columns: the label value :func:`medseg.io.labels.read_labels` gives it, the
    name, and the foreground pixels over all frames (SEG) or the contours (RTSTRUCT);
    then the referenced series.
    """
    from medseg.io.dicom.files import read_dataset
    from medseg.io.dicom.labels import summarise

    entries, series = summarise(read_dataset(path, "DICOM object"), kind)
    what, count = ("DICOM-SEG", "voxels") if kind == "seg" else ("RTSTRUCT", "contours")
    lines = [f"{os.fspath(path)}", f"  type         {what}, {len(entries)} "
             f"{'segments' if kind == 'seg' else 'ROIs'}: label, name, {count}"]
    width = max((len(e.name) for e in entries), default=4)
    lines += [f"    {e.label:>3}  {e.name:<{width}}  {e.count:>10d}" for e in entries]
    lines += [f"  series UID   {uid} (referenced)" for uid in series or ["<none referenced>"]]
    return "\n".join(lines)


def describe(volume: Volume, path: str | os.PathLike) -> str:
    """Human-readable summary of ``volume`` read from ``path`` (several lines).

    Geometry in mm (spacing along x, y, z; origin = RAS position of voxel 0),
    intensity min / max / mean, and for integer images with at most
    :data:`MAX_LABELS` distinct values each value's voxel count and volume in
    mL (voxel volume = |det(affine[:3, :3])| / 1000).
    """
    import numpy as np

    array = volume.array
    lines = [
        f"{os.fspath(path)}",
        f"  shape        {' x '.join(map(str, volume.shape))} "
        f"({'C, x, y, z' if volume.has_channels else 'x, y, z'})",
        f"  dtype        {array.dtype}",
        f"  spacing      {' x '.join(f'{s:.6g}' for s in volume.spacing_mm)} mm",
        f"  orientation  {volume.orientation}",
        f"  origin       ({', '.join(f'{o:.6g}' for o in volume.origin_mm)}) mm (RAS)",
        f"  voxel volume {volume.voxel_volume_ml:.6g} mL",
    ]
    if "series_uid" in volume.meta:
        lines.append(f"  series UID   {volume.meta['series_uid'] or '<empty>'}")
        lines.append(f"  slices       {len(volume.meta.get('dicom_files', []))} DICOM files")
    if volume.meta.get("stack"):
        lines.append(f"  stack        {volume.meta['stack_index']}: {volume.meta['stack']}")
    if array.size:
        lines.append(
            f"  intensity    min {_num(array.min())}, max {_num(array.max())}, "
            f"mean {float(np.mean(array, dtype=np.float64)):.6g}"
        )
    if array.dtype.kind in "iub" and array.size:
        lines.extend(_label_lines(array, volume.voxel_volume_ml))
    return "\n".join(lines)


def _label_lines(array: np.ndarray, voxel_ml: float) -> list[str]:
    values, counts = _value_counts(array)
    if values.size > MAX_LABELS:
        return [f"  labels       {values.size} distinct values (not a label map, not listed)"]
    lines = [f"  labels       {values.size} values: value, voxels, volume mL"]
    width = max(len(str(v)) for v in values.tolist())
    for value, count in zip(values.tolist(), counts.tolist()):
        lines.append(f"    {value:>{width}}  {count:>12d}  {count * voxel_ml:12.3f}")
    return lines


def _value_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts (bincount for small ranges, else unique)."""
    import numpy as np

    lo, hi = int(array.min()), int(array.max())
    if hi - lo < 1 << 17:
        counts = np.bincount((array.ravel(order="K").astype(np.int64) - lo), minlength=hi - lo + 1)
        values = np.flatnonzero(counts)
        return values + lo, counts[values]
    return np.unique(array, return_counts=True)


def _num(value) -> str:
    return f"{value:.6g}" if isinstance(value.item(), float) else str(value.item())
