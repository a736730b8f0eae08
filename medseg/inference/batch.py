"""Predicting many cases: torchrun sharding, all-or-nothing outputs.

``predict_cases(checkpoint, input, output)`` is what ``medseg predict`` runs.
``input`` is an image file, a DICOM series folder, a folder of image files (or
of DICOM series folders), or a manifest (MSD ``dataset.json``: its ``test``
cases, else its training cases; ``.csv`` with an ``image`` column), listed and
read by :mod:`medseg.io.cases`. ``output`` is a file for a single case
(``.nii.gz`` ..., or ``.dcm`` for a DICOM-SEG or, with ``dicom_format="rtstruct"``,
an RTSTRUCT of a DICOM input) or a folder (``<case>.nii.gz`` per case). Under
``torchrun`` the cases are shared out by rank (:class:`medseg.runtime.Runtime` reads the
environment): case ``i`` goes to rank ``i % WORLD_SIZE``, and each rank uses
``cuda:LOCAL_RANK`` on GPUs; no process group is needed.
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

from medseg.data.inputs import list_cases
from medseg.io.cases import SIDE_OUTPUTS, Case, case_name, read_case_image, side_output_name

if TYPE_CHECKING:
    from medseg.inference.predict import PredictOptions, Prediction
    from medseg.runtime import Runtime
    from medseg.volume import Volume

__all__ = ["CaseFiles", "CaseOutputs", "FolderSink", "shard_cases", "outputs_for",
           "predict_cases", "predict_into", "algorithm_name", "prepare_output",
           "write_case_outputs", "write_qc"]

log = logging.getLogger(__name__)


# -- sharding (cases are listed and read by medseg.io.cases) ---------------------------------
def shard_cases(cases: Sequence[Case], rank: int, world_size: int) -> list[Case]:
    """The cases of rank ``rank`` out of ``world_size``: case ``i`` goes to rank ``i % world_size``.

    Every case is predicted by exactly one rank; no process group is needed.
    """
    return list(cases[rank::world_size])


# -- outputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's results go: the prediction, and optional probabilities / preview /
    uncertainty map."""

    prediction: Path
    probabilities: Path
    preview: Path
    uncertainty: Path


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
    side = {kind: folder / f"{side_output_name(stem, kind)}.nii.gz" for kind in SIDE_OUTPUTS}
    return CaseOutputs(prediction, side["probabilities"], folder / f"{stem}_preview.png",
                       side["uncertainty"])


def qc_path(out: Path, file_mode: bool, rank: int = 0, world_size: int = 1) -> Path:
    """Where ``--qc`` writes its table: ``OUT/qc.csv`` for a folder, ``<stem>_qc.csv``
    beside a single output file; ``qc_rank<r>.csv`` per torchrun rank."""
    if file_mode:
        stem = case_name(out) if out.suffix.lower() != ".dcm" else out.name[:-4]
        folder, name = out.parent, f"{stem}_qc"
    else:
        folder, name = out, "qc"
    return folder / (f"{name}_rank{rank}.csv" if world_size > 1 else f"{name}.csv")


def prepare_output(out: Path, cases: Sequence[Case], dicom: bool | None = None) -> bool:
    """Check OUT against the cases and create its folder; return True for a single output file.

    ``dicom``: whether the input is DICOM (None: as the first case's files say; a caller
    that fetches its series later says so itself).
    """
    from medseg.errors import ImageWriteError, UsageError

    file_mode = _output_is_file(out)
    if file_mode and len(cases) != 1:
        raise UsageError(f"{out}: output is a file but the input holds {len(cases)} cases; "
                         "give an output folder")
    if out.suffix.lower() == ".dcm" and not (cases[0].is_dicom if dicom is None else dicom):
        raise UsageError(f"{out}: a DICOM-SEG / RTSTRUCT (.dcm) output needs a DICOM series as "
                         f"input, got {cases[0].images[0]}")
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
@dataclass(frozen=True)
class CaseFiles:
    """How :func:`predict_cases` reads the cases and what it writes beside the labels.

    Attributes
    ----------
    series : SeriesInstanceUID to read when a DICOM folder holds several series.
    tilt : resample a gantry-tilted DICOM series onto an orthogonal grid (True, with a
        warning) or refuse it (False, ``--no-tilt``).
    preview : also write ``<case>_preview.png`` overlays.
    dicom_format : what a ``.dcm`` output is: ``"seg"`` (DICOM-SEG) or ``"rtstruct"``.
    stack : the image stack(s) of a DICOM input holding several (numbers from 1 or
        names, ``--stack``); several are the input channels, in the model's order:
        their number must be the model's channel count, and a stack named as another of
        the card's channels is refused (:mod:`medseg.sources.channels`). A manifest case
        that names its own stack(s) is read with those (giving both is an error).
    """

    series: str | None = None
    tilt: bool = True
    preview: bool = False
    dicom_format: str = "seg"
    stack: tuple[int | str, ...] = ()

    def __post_init__(self) -> None:
        from medseg.errors import check_option
        from medseg.io.labels import DICOM_FORMATS

        check_option(self.dicom_format, DICOM_FORMATS, "DICOM format")


def write_case_outputs(image: Volume, result: Prediction, outputs: CaseOutputs, files: CaseFiles,
                label_names: Mapping[int, str], algorithm: str) -> None:
    """Write one case's outputs; on any failure none of them is left behind.

    The label map goes through :func:`medseg.io.labels.write_labels`: an image file, or
    for ``.dcm`` a DICOM-SEG / RTSTRUCT (``files.dicom_format``) referencing the input series.
    """
    from medseg.io import write_volume
    from medseg.io.labels import write_labels

    with _all_or_nothing() as written:
        if result.probabilities is not None:
            write_volume(result.probabilities, outputs.probabilities)
            written.append(outputs.probabilities)
        if result.qc is not None and result.qc.uncertainty is not None:
            write_volume(result.qc.uncertainty, outputs.uncertainty)
            written.append(outputs.uncertainty)
        if files.preview:
            _write_preview(image, result.labels, outputs.preview, label_names)
            written.append(outputs.preview)
        write_labels(result.labels, outputs.prediction, label_names,
                     reference_files=image.meta.get("dicom_files"),
                     dicom_format=files.dicom_format, algorithm_name=algorithm)
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


class FolderSink:
    """Where :func:`predict_cases` puts each case: its outputs under ``out`` (a folder, or one
    file), written all or nothing (:func:`write_case_outputs`), and with ``options.qc`` the
    QC rows, written as ``qc.csv`` by :meth:`finish`. ``written`` lists the outputs so far.

    The sink of :func:`predict_into`, beside :mod:`medseg.serve.pull`'s STOW-RS sink: both
    have ``loaded`` (the model), ``deliver(case, image, result) -> str`` (where the result
    went) and ``finish()``.
    """

    def __init__(self, out: Path, cases: Sequence[Case], loaded, files: CaseFiles,
                 options: PredictOptions, runtime: Runtime, dicom: bool | None = None) -> None:
        self.out, self.loaded, self.files = out, loaded, files
        self.options, self.runtime = options, runtime
        self.algorithm = algorithm_name(loaded)
        self.file_mode = prepare_output(out, cases, dicom=dicom)
        self.qc_rows: list[dict] = []
        self.written: list[CaseOutputs] = []
        card = loaded.card
        if options.qc and (card.confidence is None or card.confidence.cohort is None):
            from medseg.inference.qc import missing_cohort_message

            log.warning("%s", missing_cohort_message(loaded.source))

    def deliver(self, case: Case, image: Volume, result: Prediction) -> str:
        outputs = outputs_for(case, self.out, self.file_mode)
        write_case_outputs(image, result, outputs, self.files, self.loaded.card.labels,
                           self.algorithm)
        self.written.append(outputs)
        if self.options.qc and result.qc is not None:
            self.qc_rows.extend({"case": case.case_id, **row} for row in result.qc.rows)
        return str(outputs.prediction)

    def finish(self) -> None:
        if self.options.qc:
            path = qc_path(self.out, self.file_mode, self.runtime.rank, self.runtime.world_size)
            write_qc(self.qc_rows, path, self.loaded.card)


def predict_into(case: Case, sink, options: PredictOptions, runtime: Runtime,
                 files: CaseFiles, series: str | None = None) -> str:
    """Read ``case`` (the DICOM series ``series``, default ``files.series``), predict it
    with ``sink.loaded`` and hand the result to ``sink``; returns where it went.

    The one body of every batch loop: :func:`predict_cases` (a failure stops the batch)
    and :func:`medseg.serve.pull.predict_dicomweb` (a failure is one line, the next series
    goes on).
    """
    from medseg.inference.predict import predict_case

    image = read_case_image(case, series or files.series, tilt=files.tilt, stack=files.stack)
    result = predict_case(sink.loaded, image, options, runtime)
    return sink.deliver(case, image, result)


def predict_cases(
    model: str | os.PathLike | Sequence[str | os.PathLike],
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    options: PredictOptions | None = None,
    runtime: Runtime | None = None,
    files: CaseFiles | None = None,
) -> list[CaseOutputs]:
    """Predict every case of ``input_path`` (this rank's share under torchrun) into ``output``.

    Parameters
    ----------
    model : a checkpoint path, a cross-validation run folder or a list of checkpoints (an
        ensemble), or anything else :func:`medseg.sources.load_model` takes.
    input_path, output : see the module docstring.
    options : :class:`~medseg.inference.predict.PredictOptions` of every case.
    runtime : device, precision and torchrun rank (default ``Runtime.resolve("auto")``);
        under torchrun each rank predicts cases ``rank::world_size`` on its own GPU.
    files : :class:`CaseFiles` (DICOM series and tilt, preview, DICOM output format).

    Returns the outputs this rank wrote.
    """
    from medseg.sources import check_stack_count, load_model
    from medseg.inference.predict import PredictOptions
    from medseg.runtime import Runtime

    files = files or CaseFiles()
    runtime = runtime or Runtime.resolve("auto")
    options = options or PredictOptions(progress=sys.stderr.isatty())
    output = Path(output)
    cases = list_cases(input_path)
    mine = shard_cases(cases, runtime.rank, runtime.world_size)
    loaded = load_model(model, runtime)
    check_stack_count(files.stack, loaded.card, str(loaded.source), input_path)
    sink = FolderSink(output, cases, loaded, files, options, runtime)
    log.info("rank %d/%d: %d of %d cases on %s", runtime.rank, runtime.world_size, len(mine),
             len(cases), runtime)
    for case in _cases_progress(mine, runtime.rank):
        log.info("%s -> %s", case.case_id, predict_into(case, sink, options, runtime, files))
    sink.finish()
    return sink.written


def algorithm_name(loaded) -> str:
    """The algorithm a DICOM-SEG / RTSTRUCT names: ``medseg <network>`` (``ensemble of N``)."""
    name = f"medseg {loaded.card.model.name}"
    return name + (f" ensemble of {len(loaded.networks)}" if loaded.is_ensemble else "")


def write_qc(rows: list[dict], path: Path, card) -> None:
    """``qc.csv`` (atomic) and the summary: flags per case and the thresholds that decided."""
    from medseg.confidence import Confidence
    from medseg.inference.qc import QC_COLUMNS, qc_summary
    from medseg.io.atomic import atomic_write_text
    from medseg.results import csv_text

    def empty_nan(value):  # a measurement that could not be made is an empty cell
        return None if isinstance(value, float) and value != value else value

    atomic_write_text(path, csv_text(QC_COLUMNS, ({k: empty_nan(v) for k, v in row.items()}
                                                  for row in rows)))
    th = (card.confidence or Confidence()).thresholds
    counts = qc_summary(rows, th)["cases"]
    log.info("QC -> %s: %d cases: %d ok, %d review, %d fail (thresholds: %s)", path,
             sum(counts.values()), counts["ok"], counts["review"], counts["fail"], th.describe())
