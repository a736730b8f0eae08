"""Predicting many cases: torchrun sharding, all-or-nothing outputs.

``predict_cases(checkpoint, input, output)`` is what ``medseg predict`` runs.
``input`` is an image file, a DICOM series folder, a folder of image files (or
of DICOM series folders), or a manifest (MSD ``dataset.json``: its ``test``
cases, else its training cases; ``.csv`` with an ``image`` column), listed and
read by :mod:`medseg.io.cases`. ``output``
is a file for a single case (``.nii.gz`` ..., or ``.dcm`` for a DICOM-SEG of a
DICOM input) or a folder (``<case>.nii.gz`` per case). Under ``torchrun`` the
cases are shared out by rank: case ``i`` goes to rank ``i % WORLD_SIZE``, and
each rank uses ``cuda:LOCAL_RANK`` on GPUs; no process group is needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.io.cases import Case, case_name, list_cases, read_case_image

if TYPE_CHECKING:
    import torch

    from medseg.inference.predict import Prediction
    from medseg.volume import Volume

__all__ = ["CaseOutputs", "dist_env", "shard_cases", "outputs_for", "predict_cases"]

log = logging.getLogger(__name__)


# -- sharding (cases are listed and read by medseg.io.cases) ---------------------------------
def dist_env(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside it."""
    from medseg.errors import UsageError

    env = os.environ if environ is None else environ
    try:
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise UsageError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UsageError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} "
                         f"LOCAL_RANK={local}")
    return rank, world, local


def shard_cases(cases: Sequence[Case], rank: int, world_size: int) -> list[Case]:
    """The cases of rank ``rank`` out of ``world_size``: case ``i`` goes to rank ``i % world_size``.

    Every case is predicted by exactly one rank; no process group is needed.
    """
    return list(cases[rank::world_size])


# -- outputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's results go: the prediction, and optional probabilities / preview."""

    prediction: Path
    probabilities: Path
    preview: Path


def _output_is_file(out: Path) -> bool:
    from medseg.io.formats import extension_of

    return not out.is_dir() and (extension_of(out) is not None or out.suffix.lower() == ".dcm")


def outputs_for(case: Case, out: Path, file_mode: bool) -> CaseOutputs:
    """Output paths of ``case``: ``OUT`` itself in file mode, else ``OUT/<case>.nii.gz``."""
    if file_mode:
        stem = case_name(out) if out.suffix.lower() != ".dcm" else out.name[:-4]
        folder, prediction = out.parent, out
    else:
        stem, folder = case.case_id, out
        prediction = out / f"{case.case_id}.nii.gz"
    return CaseOutputs(prediction, folder / f"{stem}_probabilities.nii.gz",
                       folder / f"{stem}_preview.png")


def _prepare_output(out: Path, cases: Sequence[Case]) -> bool:
    """Check OUT against the cases and create its folder; return True for a single output file."""
    from medseg.errors import ImageWriteError, UsageError

    file_mode = _output_is_file(out)
    if file_mode and len(cases) != 1:
        raise UsageError(f"{out}: output is a file but the input holds {len(cases)} cases; "
                         "give an output folder")
    if out.suffix.lower() == ".dcm" and not cases[0].is_dicom:
        raise UsageError(f"{out}: a DICOM-SEG (.dcm) output needs a DICOM series as input, got "
                         f"{cases[0].images[0]}")
    folder = out.parent if file_mode else out
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"cannot create the output folder: {exc.strerror or exc}",
                              folder) from exc
    if file_mode and out.is_dir():
        raise ImageWriteError("output file name is an existing folder", out)
    return file_mode


@contextlib.contextmanager
def _all_or_nothing() -> Iterator[list[Path]]:
    """Collect the files a case writes; if anything fails, remove those already written."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


# -- running ---------------------------------------------------------------------------------
def _write_case(image: Volume, result: Prediction, outputs: CaseOutputs, preview: bool,
                label_names: Mapping[int, str], algorithm: str) -> None:
    """Write one case's outputs; on any failure none of them is left behind."""
    from medseg.io import write_volume

    with _all_or_nothing() as written:
        if result.probabilities is not None:
            write_volume(result.probabilities, outputs.probabilities)
            written.append(outputs.probabilities)
        if preview:
            _write_preview(image, result.labels, outputs.preview, label_names)
            written.append(outputs.preview)
        if outputs.prediction.suffix.lower() == ".dcm":
            from medseg.io.dicom_seg import write_dicom_seg

            write_dicom_seg(result.labels, image.meta["dicom_files"], outputs.prediction,
                            label_names, algorithm_name=algorithm)
        else:
            write_volume(result.labels, outputs.prediction)
        written.append(outputs.prediction)


def _write_preview(image: Volume, labels: Volume, png: Path, label_names: Mapping[int, str]
                   ) -> None:
    try:
        from medseg.report import render_overlay_png
    except ImportError:
        log.warning("--preview: medseg.report.render_overlay_png is not available; no preview")
        return
    render_overlay_png(image, labels, png, label_names=dict(label_names))


def _cases_progress(cases: Sequence[Case], rank: int):  # -> tqdm
    """A tqdm bar over cases, on a terminal only (and not for a single case)."""
    from tqdm.auto import tqdm

    return tqdm(cases, desc=f"predict (rank {rank})" if rank else "predict", unit="case",
                disable=None if len(cases) > 1 else True, file=sys.stderr)


def _device_for_rank(device: str, world: int, local_rank: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under torchrun on GPUs."""
    from medseg.inference.predict import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and world > 1 and resolved.index is None:
        return resolve_device(f"cuda:{local_rank}")
    return resolved


def predict_cases(
    checkpoint_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    device: str = "auto",
    overlap: float | None = None,
    tta: bool = False,
    batch_size: int = 4,
    save_probabilities: bool = False,
    preview: bool = False,
    series: str | None = None,
    keep_largest: bool | None = None,
    amp: bool | None = None,
    label_interp: str = "linear",
) -> list[CaseOutputs]:
    """Predict every case of ``input_path`` (this rank's share under torchrun) into ``output``.

    Returns the outputs this rank wrote. Other parameters as
    :func:`medseg.inference.predict.predict_case`; ``preview`` also writes
    ``<case>_preview.png`` overlays, ``series`` picks a DICOM series,
    ``keep_largest`` overrides the checkpoint's post-processing (None: keep it),
    ``amp`` sets the network's precision (see :mod:`medseg.inference.precision`),
    ``label_interp`` how labels return from a resampled network grid (``predict_case``).

    Raises
    ------
    UsageError : ``overlap`` outside [0, 1) or ``batch_size`` < 1.
    """
    from medseg.checkpoint import load_checkpoint
    from medseg.errors import UsageError
    from medseg.inference.predict import load_model_spec, predict_case

    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise UsageError(f"--overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    output = Path(output)
    cases = list_cases(input_path)
    rank, world, local_rank = dist_env()
    mine = shard_cases(cases, rank, world)
    dev = _device_for_rank(device, world, local_rank)
    checkpoint = load_checkpoint(checkpoint_path)
    spec = load_model_spec(checkpoint, dev)
    algorithm = f"medseg {checkpoint.model.get('name', 'model')}"
    file_mode = _prepare_output(output, cases)
    log.info("rank %d/%d: %d of %d cases on %s", rank, world, len(mine), len(cases), dev)
    show_windows = sys.stderr.isatty()
    written = []
    for case in _cases_progress(mine, rank):
        image = read_case_image(case, series)
        result = predict_case(spec, image, device=dev, overlap=overlap, tta=tta,
                              batch_size=batch_size, save_probabilities=save_probabilities,
                              progress=show_windows, keep_largest=keep_largest, amp=amp,
                              label_interp=label_interp)
        outputs = outputs_for(case, output, file_mode)
        _write_case(image, result, outputs, preview, spec.label_names, algorithm)
        log.info("%s -> %s", case.case_id, outputs.prediction)
        written.append(outputs)
    return written
