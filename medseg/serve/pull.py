"""``medseg predict`` with a DICOMweb side: a research batch pulled from a PACS.

::

    medseg predict -m MODEL -i dicomweb://pacs:8042/dicom-web?StudyInstanceUID=S \\
                            -o dicomweb://pacs:8042/dicom-web

:func:`predict_dicomweb` lists the study's series with QIDO-RS (or takes the one series of
``&SeriesInstanceUID=R``), fetches each image series (under torchrun: this rank's share,
as :func:`medseg.inference.batch.shard_cases` deals cases) with WADO-RS into a temporary folder
(removed after the series, and the whole folder at the end), predicts it as ``medseg
predict`` predicts a DICOM folder (the same loop body,
:func:`medseg.inference.batch.predict_into`), and stores the result with STOW-RS: a DICOM-SEG, or an
RTSTRUCT with ``--dicom-format rtstruct``. The output may instead be a local folder (each
series written by ``medseg predict``'s own :class:`~medseg.inference.batch.FolderSink`,
``<SeriesInstanceUID>.nii.gz`` ...), and
a local DICOM input (a series folder, a folder of series) may be stored with STOW-RS.

Credentials and the CA bundle of an https service come from the environment variables
``MEDSEG_DICOMWEB_USERNAME`` and ``MEDSEG_DICOMWEB_PASSWORD`` (HTTP basic auth) or
``MEDSEG_DICOMWEB_TOKEN`` (a bearer token), and ``MEDSEG_DICOMWEB_CA_CERT``
(:data:`medseg.serve.dicomweb.ENV`); they serve both sides. Credentials the service refuses
(HTTP 401 or 403) stop the run at the first request, in one line.

The guarantees are those of the node (:mod:`medseg.serve`), from the same code:

* every series is tried: a series that is no image series by its Modality (a DICOM-SEG,
  an RTSTRUCT, a report, ...: medseg's own earlier results among them) is skipped with
  one line; an image series that cannot be read or predicted (missing slices, mixed
  geometries, undecodable pixels) fails with one line, and the others still go through;
* nothing partial: a result is written whole into the temporary folder (or through
  ``medseg.io.atomic`` into a local output) before it is stored, and STOW-RS stores one
  object or none;
* a re-run replaces rather than adds: the result's Series and SOP Instance UIDs derive
  from the source series, the model and the format
  (:func:`medseg.serve.process.result_uids`, the node's own rule, so the node and a batch
  that run one model on one series produce one object).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import UsageError
from medseg.serve.config import Route, resolve_model
from medseg.serve.dicomweb import (
    DicomwebAccess,
    DicomwebAuthError,
    DicomwebLocation,
    RemoteSeries,
    fetch_series,
    is_dicomweb,
    list_series,
    parse_location,
)
from medseg.serve.process import SERIES_ERRORS, RouteModel
from medseg.serve.send import SendAuthError

__all__ = ["PullReport", "predict_dicomweb", "model_key"]

log = logging.getLogger(__name__)


@dataclass
class PullReport:
    """What one run did, one entry per series (or local case): where its result went, or
    the one line saying why it was skipped or failed."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Item:
    """One series to predict: its name in messages, the case it becomes, and how its files
    get there (None: they are local already)."""

    name: str
    case: Any  # medseg.io.cases.Case
    fetch: Callable[[], object] | None = None
    series_uid: str | None = None


def predict_dicomweb(model, input_path: str | os.PathLike, output: str | os.PathLike,
                     options=None, runtime=None, files=None) -> PullReport:
    """Predict every image series of ``input_path`` into ``output``, either or both of
    them a ``dicomweb[s]://`` URL (:mod:`medseg.serve.dicomweb`).

    Parameters
    ----------
    model : what :func:`medseg.sources.load_model` takes (``medseg predict -m``).
    input_path : ``dicomweb[s]://HOST/PATH?StudyInstanceUID=S[&SeriesInstanceUID=R]``, or a
        local DICOM input (a series folder or a folder of them) for a DICOMweb output.
    output : ``dicomweb[s]://HOST/PATH`` (STOW-RS), or a local folder or file (as
        :func:`medseg.inference.batch.predict_cases` writes them).
    options, runtime, files : as for :func:`~medseg.inference.batch.predict_cases`;
        ``files.series`` picks one series of a DICOMweb study, ``files.dicom_format`` what
        STOW-RS stores.

    Returns a :class:`PullReport`; each skipped or failed series was logged in one line.

    Raises
    ------
    UsageError : a malformed URL, a URL output with a query, options that write files
        beside the outputs (``--qc``, probabilities, uncertainty, previews) with a DICOMweb
        output, a local input that is not DICOM for a DICOMweb output.
    DicomwebError : the service is unreachable or holds no such study or series;
        DicomwebAuthError when it refuses the credentials (the run stops there).
    DataError : the input holds no image series at all.
    """
    from medseg.inference.batch import CaseFiles, shard_cases
    from medseg.inference.predict import PredictOptions
    from medseg.runtime import Runtime

    files = files or CaseFiles()
    runtime = runtime or Runtime.resolve("auto")
    options = options or PredictOptions(progress=sys.stderr.isatty())
    report = PullReport()
    access = DicomwebAccess.from_environment()
    stow_url = _stow_url(output, options, files, access) if is_dicomweb(output) else None
    with tempfile.TemporaryDirectory(prefix="medseg-dicomweb-") as scratch:
        items = _items(input_path, files, Path(scratch), report, access)
        sink = _sink(stow_url or Path(output), items, model, options, runtime, files,
                     Path(scratch), str(input_path), access)
        for item in shard_cases(items, runtime.rank, runtime.world_size):
            _predict_item(item, sink, options, runtime, files, report)
        sink.finish()
    log.info("%d series predicted, %d skipped, %d failed", len(report.done),
             len(report.skipped), len(report.failed))
    return report


def _predict_item(item: _Item, sink, options, runtime, files, report: PullReport) -> None:
    """Fetch one series, then read, predict and deliver it as every batch does
    (:func:`medseg.inference.batch.predict_into`); a failure is one line in the log. A
    fetched series is read by its UID, so instances that are not of it cannot stand in."""
    from medseg.inference.batch import predict_into

    try:
        if item.fetch is not None:
            item.fetch()
        where = predict_into(item.case, sink, options, runtime, files, item.series_uid)
    except (DicomwebAuthError, SendAuthError):
        raise  # every other series would fail alike
    except SERIES_ERRORS as exc:
        line = f"{item.name}: failed: {' '.join(str(exc).split())}"
        log.error("%s", line)
        report.failed.append(line)
    else:
        log.info("%s -> %s", item.name, where)
        report.done.append(where)
    finally:
        if item.fetch is not None:
            shutil.rmtree(item.case.images[0], ignore_errors=True)


# -- what is predicted ------------------------------------------------------------------------
def _items(input_path, files, scratch: Path, report: PullReport,
           access: DicomwebAccess) -> list[_Item]:
    """The series of a DICOMweb input (non-image series skipped here, one line each), or
    the cases of a local DICOM input."""
    from medseg.data.inputs import list_cases
    from medseg.errors import DataError
    from medseg.io.cases import Case

    if not is_dicomweb(input_path):
        return [_Item(f"case {case.case_id}", case) for case in list_cases(input_path)]
    location = parse_location(str(input_path))
    if files.series and location.series_uid and files.series != location.series_uid:
        raise UsageError(f"--series {files.series} and the URL's SeriesInstanceUID "
                         f"{location.series_uid} differ")
    if files.series and not location.series_uid:
        location = DicomwebLocation(location.url, location.study_uid, files.series)
    items = []
    for i, series in enumerate(list_series(location, access)):
        kind = series.non_image_kind
        if kind is not None:
            line = f"{series}: skipped: a {kind}, not an image series"
            log.warning("%s", line)
            report.skipped.append(line)
            continue
        folder = scratch / "series" / f"{i:04d}"
        items.append(_Item(str(series), Case(series.uid, (folder,), split="test"),
                           _fetcher(location, series, folder, access), series.uid))
    if not items:
        raise DataError("holds no image series (every series was skipped)", str(location))
    return items


def _fetcher(location: DicomwebLocation, series: RemoteSeries, folder: Path,
             access: DicomwebAccess):
    return lambda: fetch_series(location, series.uid, folder, access)


# -- where results go -------------------------------------------------------------------------
def _load(model, runtime, files, source: str):
    """The model, loaded once, with ``--stack`` checked against its channels."""
    from medseg.sources import check_stack_count, load_model

    loaded = load_model(model, runtime)
    check_stack_count(files.stack, loaded.card, str(loaded.source), source)
    return loaded


def _stow_url(output, options, files, access: DicomwebAccess) -> str:
    """The service a DICOMweb ``output`` names, checked before anything is fetched.

    Raises
    ------
    UsageError : a query in the URL, or options that write files beside the outputs.
    DicomwebAuthError : the service answers 401 to the credentials (:func:`_check_access`).
    """
    target = parse_location(str(output))
    if target.study_uid is not None:
        raise UsageError(f"{output}: a DICOMweb output is the service only "
                         "(dicomweb://HOST/PATH, no query): results join their source's study")
    asked = [name for name, on in (("--qc", options.qc),
                                   ("--save-probabilities", options.save_probabilities),
                                   ("--save-uncertainty", options.uncertainty),
                                   ("--preview", files.preview)) if on]
    if asked:
        raise UsageError(f"{', '.join(asked)} write files beside a local output; a DICOMweb "
                         "output stores only the DICOM-SEG / RTSTRUCT (give a local -o)")
    _check_access(target.url, access)
    return target.url


def _check_access(url: str, access: DicomwebAccess) -> None:
    """Ask the output service one QIDO-RS question (a study, at most) before any series is
    predicted, so that credentials it does not know (HTTP 401) stop the run at once. Any
    other answer lets the run go on: a service may refuse searches (403) to an account that
    may store, and STOW-RS tells of its own failures."""
    from medseg.serve.dicomweb import DicomwebError, answering, dicomweb_client

    try:
        with answering(url, "QIDO-RS (search for studies)"):
            dicomweb_client(url, access).search_for_studies(limit=1)
    except DicomwebAuthError as exc:
        if exc.status == 401:
            raise
    except DicomwebError as exc:
        log.debug("%s (the run goes on)", exc.message)


def _sink(output: str | Path, items: Sequence[_Item], model, options, runtime, files,
          scratch: Path, source: str, access: DicomwebAccess):
    """The STOW-RS sink of a service URL (``str``) or the folder sink of a local ``Path``
    (:class:`medseg.inference.batch.FolderSink`, as ``medseg predict`` writes), the model
    loaded once."""
    from medseg.inference.batch import algorithm_name

    if isinstance(output, str):
        local = [i.case for i in items if i.fetch is None and not i.case.is_dicom]
        if local:
            raise UsageError(f"{local[0].images[0]}: a DICOMweb output stores DICOM-SEG / "
                             "RTSTRUCT, which needs a DICOM series as input")
        loaded = _load(model, runtime, files, source)
        route = Route(model=model_key(model), format=files.dicom_format)
        return _Stow(output, RouteModel(route, loaded, options, algorithm_name(loaded)),
                     scratch / "results", access)
    from medseg.inference.batch import FolderSink

    loaded = _load(model, runtime, files, source)
    fetched = any(i.fetch is not None for i in items)  # DICOM, once fetched
    return FolderSink(output, [i.case for i in items], loaded, files, options, runtime,
                      True if fetched else None)


class _Stow:
    """Write the route's DICOM-SEG / RTSTRUCT into scratch, store it with STOW-RS."""

    def __init__(self, url: str, route_model: RouteModel, scratch: Path,
                 access: DicomwebAccess) -> None:
        self.url, self.route_model, self.scratch, self.access = url, route_model, scratch, access
        self.loaded = route_model.loaded
        scratch.mkdir(parents=True, exist_ok=True)

    def deliver(self, case, image, result) -> str:
        from medseg.serve.process import write_result
        from medseg.serve.send import stow_rs

        path = write_result(result.labels, image, self.route_model, self.scratch)
        try:
            stow_rs(path, self.url, self.access)
        finally:
            path.unlink(missing_ok=True)
        return f"{self.url} ({self.route_model.route.format}, SOP Instance UID {path.stem})"

    def finish(self) -> None:
        """Nothing is left to write (STOW-RS stored each result whole)."""


def model_key(model) -> str:
    """``model`` as the result UIDs name it (:func:`medseg.serve.process.result_uids`):
    paths made absolute as ``medseg serve``'s config makes a route's model, ensembles as a
    comma list, an nnU-Net folder as ``nnunet:FOLDER`` (its folds and checkpoint added
    when they are not the defaults), so that the node and a batch give one object."""
    from medseg.sources.nnunet.load import NnunetSource

    keys = []
    for part in model if isinstance(model, (list, tuple)) else [model]:
        if isinstance(part, NnunetSource):
            key = resolve_model(f"nnunet:{part.path}", Path.cwd())
            if part.folds is not None:
                key += f" folds {','.join(part.folds)}"
            if part.checkpoint != "final":
                key += f" checkpoint {part.checkpoint}"
        elif isinstance(part, (str, os.PathLike)):
            key = resolve_model(os.fspath(part), Path.cwd())
        else:  # a model object from Python: its source names it
            key = str(getattr(part, "source", part))
        keys.append(key)
    return ",".join(keys)
