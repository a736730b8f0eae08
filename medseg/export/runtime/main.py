"""``python DIR/predict.py INPUT OUTPUT [--tta]``: the runner of a ``medseg export`` folder.

Reads a NIfTI image (``.nii`` / ``.nii.gz``, as nibabel reads it: ``img.affine``, scaled
values; a 4D image (x, y, z, C) is channels), segments it as ``medseg predict`` would with
the exported model and writes the label map (uint8, or uint16 above 256 classes) with the
input's shape and affine; ``--probabilities FILE`` also writes the (x, y, z, K) float32
probabilities. Every file is written to a temporary file in the output's folder and then
renamed, so a failure leaves nothing partial. Bad input gives one line on stderr,
``predict.py: error: FILE: what is wrong``, and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from medseg.errors import ImageReadError, ImageWriteError, MedsegError
from medseg.export.runtime.pipeline import ExportedModel, predict_volume
from medseg.volume import Volume

__all__ = ["main", "read_nifti", "write_nifti"]

log = logging.getLogger("predict")
EXTENSIONS = (".nii", ".nii.gz")


def read_nifti(path: str | os.PathLike) -> Volume:
    """The image of a NIfTI file as medseg reads it (ImageReadError naming the file)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ImageReadError("no such file", path)
    if not path.name.lower().endswith(EXTENSIONS):
        raise ImageReadError("not a NIfTI file (.nii or .nii.gz): the runner reads NIfTI", path)
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for broken files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"cannot read NIfTI ({reason})", path) from None
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0]
    if array.ndim == 4:
        array = np.moveaxis(array, -1, 0)
    if array.ndim not in (3, 4) or array.dtype.kind not in "iufb":
        raise ImageReadError(f"expected a 3D image (x, y, z) or channels (x, y, z, C) of "
                             f"numbers, got shape {array.shape} of {array.dtype}", path)
    if not np.all(np.isfinite(affine)):
        raise ImageReadError("the affine holds NaN or inf", path)
    return Volume(array, affine, {"source": str(path)})


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """``array`` ((x, y, z), or (C, x, y, z) written channels last) as NIfTI with sform and
    qform ``affine``, through a temporary file in the same folder renamed at the end."""
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith(EXTENSIONS):
        raise ImageWriteError("the output must be a NIfTI file (.nii or .nii.gz)", path)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    image = nib.Nifti1Image(np.asarray(array), affine, dtype=array.dtype)
    image.set_sform(affine, code="scanner")
    image.set_qform(affine, code="scanner")
    image.header.set_xyzt_units(xyz="mm")
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(handle)
    except OSError as exc:
        raise ImageWriteError(f"cannot write here ({exc.strerror or exc})", path) from None
    try:
        image.to_filename(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ImageWriteError(f"cannot write NIfTI ({exc.strerror or exc})", path) from None
        raise
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py", description="Segment a NIfTI image with this exported medseg model "
        "(no torch, no medseg: numpy, scipy, nibabel, and onnxruntime or openvino).")
    parser.add_argument("input", type=Path, help="image (.nii / .nii.gz)")
    parser.add_argument("output", type=Path, help="label map to write (.nii / .nii.gz)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirroring test-time augmentation (default: as the model card "
                             "says)")
    parser.add_argument("--probabilities", type=Path, default=None, metavar="FILE",
                        help="also write the class probabilities (x, y, z, K) float32 here")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of ONNX Runtime or OpenVINO (default 0: the "
                             "engine's choice, all cores)")
    parser.add_argument("--bf16", action="store_true",
                        help="OpenVINO exports: compute in bfloat16 (about 2x faster on CPUs "
                             "with AMX or AVX-512 BF16; the labels agree less closely)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    return parser


def main(argv: list[str] | None = None, folder: str | os.PathLike | None = None) -> int:
    """Run the runner; ``folder`` is the export folder (default: this file's)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        volume = read_nifti(args.input)
        model = ExportedModel.load(folder, args.threads, "bf16" if args.bf16 else "fp32")
        result = predict_volume(model, volume, args.tta, args.probabilities is not None)
        if result.probabilities is not None:
            write_nifti(result.probabilities.astype(np.float32), volume.affine,
                        args.probabilities)
        try:
            write_nifti(result.labels, volume.affine, args.output)
        except MedsegError:
            if args.probabilities is not None:
                args.probabilities.unlink(missing_ok=True)
            raise
    except MedsegError as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
