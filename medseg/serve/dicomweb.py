"""DICOMweb: a study (or one series) on a DICOMweb service named by a URL, found with
QIDO-RS and fetched with WADO-RS (dicomweb-client); STOW-RS is :func:`medseg.serve.send.stow_rs`.

::

    dicomweb://HOST[:PORT]/PATH?StudyInstanceUID=S[&SeriesInstanceUID=R]   (http)
    dicomwebs://HOST[:PORT]/PATH?...                                        (https)

name the study ``S`` (or its series ``R``) of the service at ``http[s]://HOST[:PORT]/PATH``
(Orthanc: ``/dicom-web``); without a query the URL names only the service (an output).
https verifies the server's certificate against the system's CAs, or the bundle named by
``REQUESTS_CA_BUNDLE`` (requests' own rule), or a CA bundle of its own
(:class:`DicomwebAccess`'s ``ca_cert``).

Credentials (:class:`DicomwebAccess`): HTTP basic auth (user name and password) or a bearer
token, from ``medseg serve``'s config (``destination.auth``: the secrets are named by
environment variables) or, for ``medseg predict``, from the environment variables
:data:`ENV` names. A secret goes only into the HTTP session's ``Authorization`` header:
never into a URL, a message, a ``repr`` or the JSON-lines log.

Every client is made by :func:`dicomweb_client`, and every failure of the service (refused,
unreachable, an HTTP error status, an answer that is not DICOM) becomes a
:class:`DicomwebError` of one line naming the URL. UIDs that arrive in answers are held to
the DICOM UID grammar (:func:`medseg.serve.spool.check_uid`) before anything uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from medseg.errors import DataError, MedsegError, UsageError, closest
from medseg.serve.spool import check_uid

__all__ = ["SCHEMES", "ENV", "DicomwebAccess", "DicomwebAuthError", "DicomwebError",
           "DicomwebLocation", "RemoteSeries", "answering", "is_dicomweb",
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


#: ``medseg predict``'s environment variables for a DICOMweb service: basic auth (user
#: name and password), or a bearer token, and a CA bundle (PEM) for https.
ENV = {"username": "MEDSEG_DICOMWEB_USERNAME", "password": "MEDSEG_DICOMWEB_PASSWORD",
       "token": "MEDSEG_DICOMWEB_TOKEN", "ca_cert": "MEDSEG_DICOMWEB_CA_CERT"}


class DicomwebError(MedsegError):
    """The DICOMweb service did not answer as asked (refused, unreachable, HTTP error)."""


class DicomwebAuthError(DicomwebError):
    """The service refused the credentials (HTTP ``status`` 401 or 403): no later request
    can do better, so a batch stops here instead of failing each series alike."""

    status: int = 401


@dataclass(frozen=True)
class DicomwebAccess:
    """How to reach a DICOMweb service: HTTP basic auth (``username`` and ``password``) or
    a bearer ``token`` (or neither), and ``ca_cert``, a PEM bundle of the CAs that https
    certificates must chain to (None: requests' default). The secrets stay out of ``repr``.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_cert: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DicomwebAccess:
        """The access that the :data:`ENV` variables give (``medseg predict``).

        Raises
        ------
        UsageError : a user name without a password (or the reverse), both a user name
            and a token, or a CA bundle that is not a file; each names the variables only.
        """
        env = os.environ if environ is None else environ
        values = {key: env.get(name) or None for key, name in ENV.items()}
        if (values["username"] is None) != (values["password"] is None):
            raise UsageError(f"set both {ENV['username']} and {ENV['password']} (HTTP basic "
                             "auth), or neither")
        if values["username"] and values["token"]:
            raise UsageError(f"set {ENV['username']} / {ENV['password']} (basic auth) or "
                             f"{ENV['token']} (bearer token), not both")
        if values["ca_cert"] and not Path(values["ca_cert"]).is_file():
            raise UsageError(f"{ENV['ca_cert']} = {values['ca_cert']!r}: no such file "
                             "(a PEM bundle of CA certificates)")
        return cls(**values)

    def session(self):  # -> requests.Session
        """A requests session that sends these credentials and checks https against
        ``ca_cert``.

        The bundle is given to the https adapter itself: requests lets
        ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` override a session's ``verify``
        (psf/requests#3829), and many systems set those.
        """
        import requests

        session = requests.Session()
        if self.username is not None:
            session.auth = (self.username, self.password or "")
        elif self.token is not None:
            session.headers["Authorization"] = f"Bearer {self.token}"
        if self.ca_cert:
            session.mount("https://", _verifying_adapter(self.ca_cert))
        return session


def _verifying_adapter(ca_cert: str):  # -> requests.adapters.HTTPAdapter
    """An HTTPAdapter that checks every https certificate against ``ca_cert``."""
    from requests.adapters import HTTPAdapter

    class Verifying(HTTPAdapter):
        def send(self, request, **kwargs):
            kwargs["verify"] = ca_cert
            return super().send(request, **kwargs)

    return Verifying()


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


def dicomweb_client(url: str, access: DicomwebAccess | None = None):
    """The client (``dicomweb_client.DICOMwebClient``) of the service at ``url`` (http or
    https) with ``access``'s credentials and CA bundle, :data:`TIMEOUT_S` and
    :data:`RETRY_ATTEMPTS`; the library's own log (a line per request) is kept below
    medseg's INFO lines."""
    from dicomweb_client.api import DICOMwebClient

    library_log = logging.getLogger("dicomweb_client")
    if library_log.level == logging.NOTSET:
        library_log.setLevel(logging.WARNING)
    client = DICOMwebClient(url, session=(access or DicomwebAccess()).session(),
                            timeout=TIMEOUT_S)
    client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS,
                                 wait_exponential_multiplier=RETRY_WAIT_MS)
    return client


@contextlib.contextmanager
def answering(url: str, what: str) -> Iterator[None]:
    """Turn whatever the service or the connection raises into one DicomwebError line."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        raise _http_error(exc, url, what) from exc
    except requests.ConnectionError as exc:  # requests' text holds the pool's repr
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        reason = errno.group(0) if errno else " ".join(str(exc).split())
        raise DicomwebError(f"{what} at {url} failed: cannot connect ({reason})") from exc
    except (requests.RequestException, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DicomwebError(f"{what} at {url} failed: {detail}") from exc


def _http_error(exc, url: str, what: str) -> DicomwebError:
    """One line for an HTTP error status: the service, the status and its reason (requests'
    own text names the request's URL, which never holds a secret)."""
    response = exc.response
    if response is None:
        return DicomwebError(f"{what} at {url} failed: {' '.join(str(exc).split())}")
    line = f"{what} at {url} failed: HTTP {response.status_code} {response.reason or ''}"
    if response.status_code in (401, 403):
        error = DicomwebAuthError(f"{line.rstrip()} (the credentials were refused or are "
                                  "missing: check the user name, password or token)")
        error.status = response.status_code
        return error
    return DicomwebError(line.rstrip())


def list_series(location: DicomwebLocation, access: DicomwebAccess | None = None
                ) -> list[RemoteSeries]:
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
        answers = dicomweb_client(location.url, access).search_for_series(
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


def fetch_series(location: DicomwebLocation, series_uid: str, folder: Path,
                 access: DicomwebAccess | None = None) -> list[Path]:
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
    client = dicomweb_client(location.url, access)
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
