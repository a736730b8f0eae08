"""DICOMweb: a study (or one series) on a DICOMweb service named by a URL, found with
QIDO-RS and fetched with WADO-RS (dicomweb-client); STOW-RS is :func:`medseg.serve.send.stow_rs`.

::

    dicomweb://HOST[:PORT]/PATH?StudyInstanceUID=S[&SeriesInstanceUID=R]   (http)
    dicomwebs://HOST[:PORT]/PATH?...                                        (https)

name the study ``S`` (or its series ``R``) of the service at ``http[s]://HOST[:PORT]/PATH``
(Orthanc: ``/dicom-web``); without a query the URL names only the service (an output).
https verifies the server's certificate against the system's CAs, or the bundle named by
``REQUESTS_CA_BUNDLE`` (requests' own rule).

Every client is made by :func:`dicomweb_client`, and every failure of the service (refused,
unreachable, an HTTP error status, an answer that is not DICOM) becomes a
:class:`DicomwebError` of one line naming the URL. UIDs that arrive in answers are held to
the DICOM UID grammar (:func:`medseg.serve.spool.check_uid`) before anything uses them.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medseg.errors import DataError, MedsegError, UsageError, closest
from medseg.serve.spool import check_uid

__all__ = ["SCHEMES", "DicomwebError", "DicomwebLocation", "RemoteSeries", "answering", "is_dicomweb",
           "parse_location", "dicomweb_client", "list_series", "fetch_series"]

log = logging.getLogger(__name__)

#: URL scheme -> the HTTP scheme of the service.
SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
_QUERY_KEYS = ("StudyInstanceUID", "SeriesInstanceUID")
#: (connect, read) timeouts of every request, in seconds.
TIMEOUT_S = (10.0, 300.0)
#: Attempts of a request that fails to connect or answers 408, 429, 503 or 504
#: (dicomweb-client's retry), and the first pause in ms, doubled before each further
#: attempt (1, 2 and 4 s with these values; the library's own default waits 30 s in all).
RETRY_ATTEMPTS, RETRY_WAIT_MS = 4, 500
#: QIDO-RS JSON tags (PS3.18 F.2): what a series answer carries.
_SERIES_UID, _MODALITY, _DESCRIPTION, _INSTANCES = "0020000E", "00080060", "0008103E", "00201209"


class DicomwebError(MedsegError):
    """The DICOMweb service did not answer as asked (refused, unreachable, HTTP error)."""


@dataclass(frozen=True)
class DicomwebLocation:
    """A DICOMweb service (``url``: http or https) and optionally a study and a series in it."""

    url: str
    study_uid: str | None = None
    series_uid: str | None = None

    def __str__(self) -> str:
        what = [f"{k}={v}" for k, v in zip(_QUERY_KEYS, (self.study_uid, self.series_uid)) if v]
        return self.url + (f"?{'&'.join(what)}" if what else "")


@dataclass(frozen=True)
class RemoteSeries:
    """One series as QIDO-RS describes it (``instances``: None where the service omits it)."""

    uid: str
    modality: str
    description: str
    instances: int | None

    def __str__(self) -> str:
        count = "" if self.instances is None else f", {self.instances} instances"
        return f"series {self.uid} ({self.modality or 'no modality'} {self.description!r}{count})"

    @property
    def non_image_kind(self) -> str | None:
        """What the series holds when it is no image series by its Modality ("DICOM-SEG",
        "RTSTRUCT", "Structured Report (SR)", ...; :func:`medseg.io.dicom.files.non_image_kind`),
        None for an image modality."""
        from pydicom import Dataset

        from medseg.io.dicom.files import non_image_kind

        header = Dataset()
        header.Modality = self.modality
        return non_image_kind(header)


def is_dicomweb(text: object) -> bool:
    """True when ``text`` is a ``dicomweb://`` or ``dicomwebs://`` URL."""
    return isinstance(text, str) and urlsplit(text).scheme.lower() in SCHEMES


def parse_location(text: str) -> DicomwebLocation:
    """The service, study and series that ``dicomweb[s]://HOST[:PORT]/PATH?...`` names.

    Raises
    ------
    UsageError
        not a dicomweb URL, no host, a query key other than StudyInstanceUID and
        SeriesInstanceUID (the closest one named), a repeated key, a series without its
        study, or a value that is not a DICOM UID.
    """
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise UsageError(f"{text!r}: expected dicomweb://HOST[:PORT]/PATH (https: dicomwebs://)"
                         "[?StudyInstanceUID=UID[&SeriesInstanceUID=UID]]")
    if parts.fragment:
        raise UsageError(f"{text!r}: a DICOMweb URL has no #fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise UsageError(f"{text!r}: the query is not KEY=VALUE&...: {exc}") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key not in _QUERY_KEYS:
            hint = closest(key, _QUERY_KEYS)
            raise UsageError(f"{text!r}: unknown query key {key!r}"
                             + (f" (did you mean {hint!r}?)" if hint else "")
                             + f"; expected {' and '.join(_QUERY_KEYS)}")
        if key in query:
            raise UsageError(f"{text!r}: {key} is given twice")
        query[key] = _uid(value, key, text)
    if "SeriesInstanceUID" in query and "StudyInstanceUID" not in query:
        raise UsageError(f"{text!r}: SeriesInstanceUID needs its StudyInstanceUID (WADO-RS "
                         "fetches a series within its study)")
    url = urlunsplit((SCHEMES[scheme], parts.netloc, parts.path.rstrip("/"), "", ""))
    return DicomwebLocation(url, query.get("StudyInstanceUID"), query.get("SeriesInstanceUID"))


def _uid(value: str, key: str, text: str) -> str:
    try:
        return check_uid(value, key)
    except DataError as exc:
        raise UsageError(f"{text!r}: {exc.message}") from exc


def dicomweb_client(url: str):  # -> dicomweb_client.DICOMwebClient
    """The client of the service at ``url`` (http or https), with :data:`TIMEOUT_S` and
    :data:`RETRY_ATTEMPTS`; the library's own log (a line per request) is kept below
    medseg's INFO lines."""
    from dicomweb_client.api import DICOMwebClient

    library_log = logging.getLogger("dicomweb_client")
    if library_log.level == logging.NOTSET:
        library_log.setLevel(logging.WARNING)
    client = DICOMwebClient(url, timeout=TIMEOUT_S)
    client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS,
                                 wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


@contextlib.contextmanager
def answering(url: str, what: str) -> Iterator[None]:
    """Turn whatever the service or the connection raises into one DicomwebError line."""
    import requests

    try:
        yield
    except requests.ConnectionError as exc:  # requests' text holds the pool's repr
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        reason = errno.group(0) if errno else " ".join(str(exc).split())
        raise DicomwebError(f"{what} at {url} failed: cannot connect ({reason})") from exc
    except (requests.RequestException, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DicomwebError(f"{what} at {url} failed: {detail}") from exc


def list_series(location: DicomwebLocation) -> list[RemoteSeries]:
    """Every series of the location's study (or its one series), by QIDO-RS, in the
    service's order.

    Raises
    ------
    UsageError : the location names no study.
    DicomwebError : the service fails, or it holds no such study (or series).
    """
    if location.study_uid is None:
        raise UsageError(f"{location}: give the study to read, "
                         "dicomweb://HOST/PATH?StudyInstanceUID=UID")
    filters = {"SeriesInstanceUID": location.series_uid} if location.series_uid else None
    with answering(location.url, "QIDO-RS (search for series)"):
        answers = dicomweb_client(location.url).search_for_series(
            study_instance_uid=location.study_uid, search_filters=filters,
            get_remaining=True)
    series = [_series(answer, location) for answer in answers or []]
    if location.series_uid is not None:  # a service that ignores the filter
        series = [s for s in series if s.uid == location.series_uid]
    if not series:
        raise DicomwebError(f"{location}: the service holds no such "
                            f"{'series' if location.series_uid else 'study'}")
    return series


def _series(answer: dict, location: DicomwebLocation) -> RemoteSeries:
    def value(tag: str):
        values = (answer.get(tag) or {}).get("Value") or [None]
        return values[0]

    try:
        uid = check_uid(value(_SERIES_UID), "SeriesInstanceUID")
    except DataError as exc:
        raise DicomwebError(f"{location}: QIDO-RS answered a series with {exc.message}") \
            from exc
    count = value(_INSTANCES)
    return RemoteSeries(uid, str(value(_MODALITY) or ""), str(value(_DESCRIPTION) or ""),
                        int(count) if count is not None else None)


def fetch_series(location: DicomwebLocation, series_uid: str, folder: Path) -> list[Path]:
    """Write every instance of ``series_uid`` (of the location's study) into ``folder`` as
    ``00000.dcm``, ``00001.dcm``, ... by WADO-RS, in its stored transfer syntax.

    The instances are streamed one at a time (memory: one instance). Returns the files.

    Raises
    ------
    DicomwebError : the service fails or the connection drops (the files already written
        stay in ``folder``: the caller's temporary folder).
    """
    from pydicom.errors import InvalidDicomError

    folder.mkdir(parents=True, exist_ok=True)
    client = dicomweb_client(location.url)
    files: list[Path] = []
    with answering(location.url, f"WADO-RS (retrieve series {series_uid})"):
        try:
            instances = client.iter_series(location.study_uid, series_uid,
                                           media_types=(("application/dicom", "*"),))
            for i, dataset in enumerate(instances):
                path = folder / f"{i:05d}.dcm"
                dataset.save_as(path)
                files.append(path)
        except InvalidDicomError as exc:
            raise ValueError(f"an answer is not DICOM ({exc})") from exc
    log.debug("fetched %d instances of series %s into %s", len(files), series_uid, folder)
    return files
