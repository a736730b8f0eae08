"""The ``medseg serve`` configuration: one YAML file, every key checked on load.

::

    ae_title: MEDSEG                # this node's AE title (1-16 characters)
    host: 0.0.0.0                   # where it listens
    port: 11112
    allowed_calling_aets: [ORTHANC] # associations from any other AE title are rejected
    spool: /var/spool/medseg        # received series, job states, results (relative: to this file)
    series_timeout_s: 30            # a series is complete after this long without a new instance
    routes:                         # the first route whose match fits a series takes it
      - match: {modality: CT, series_description: "(?i)abdomen", body_part: ABDOMEN}
        model: models/organs.safetensors      # anything `medseg predict -m` takes
        format: seg                           # seg (DICOM-SEG) or rtstruct
        options: {overlap: 0.5, tta: false}   # PredictOptions fields
    destination: {ae_title: ORTHANC, host: pacs.local, port: 4242}   # C-STORE, or:
    # destination: {dicomweb: http://pacs.local:8042/dicom-web}      # STOW-RS
    # destination: {dicomweb: https://pacs.local/dicom-web, ca_cert: hospital-ca.pem,
    #               auth: {username: medseg, password_env: MEDSEG_PACS_PASSWORD}}
    #               (or auth: {token_env: MEDSEG_PACS_TOKEN}: a bearer token)
    max_spool_gb: 20                # instances are refused (status A700) above this
    tls: {certificate: node.pem, key: node.key, ca: hospital-ca.pem}  # optional

and, with defaults: ``retention_h`` (24: done and failed series leave the spool after
this many hours; their job records stay), ``max_associations`` (32: associations open at
once; one more is rejected with "local limit exceeded", which a PACS retries),
``acse_timeout_s`` (30: a caller must ask for an association, and a peer answer an
association or release request, within this long), ``network_timeout_s`` (60: an
association on which nothing arrives for this long, idle or stalled in the middle of an
instance, is aborted, so that no caller keeps one of ``max_associations`` forever),
``dimse_timeout_s`` (30: the wait for a DIMSE answer, e.g. the PACS's C-STORE response when
sending), ``queue_size`` (4: series handed to the worker
at once; the rest wait in the spool), ``send_attempts`` (5) and ``retry_s`` (30: the
pause between them), ``device`` (``auto``), ``log`` (the JSON-lines log; default
``SPOOL/serve.jsonl``).

Keys are read by :func:`medseg.config.build_section`, the reader of pipeline YAMLs: an
unknown key is a :class:`~medseg.errors.ConfigError` naming the file, the key and the
closest valid one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.config import build_section, read_yaml
from medseg.errors import ConfigError, UsageError, check_keywords, check_option

__all__ = ["FORMATS", "Match", "Route", "DicomwebAuth", "Destination", "Tls", "ServeConfig", "resolve_model",
           "load_serve_config", "parse_serve_config"]

#: What a route writes: DICOM-SEG or RTSTRUCT (medseg.io.labels.DICOM_FORMATS).
FORMATS = ("seg", "rtstruct")
#: PredictOptions fields a route's ``options`` may set.
ROUTE_OPTIONS = ("overlap", "batch_size", "tta", "keep_largest", "label_interp")


@dataclass
class Match:
    """Which series a route takes; an absent key matches anything.

    Attributes
    ----------
    modality : Modality (0008,0060), compared without regard to case (``CT``).
    series_description : a regular expression searched in Series Description (0008,103E).
    body_part : Body Part Examined (0018,0015), compared without regard to case.
    """

    modality: str | None = None
    series_description: str | None = None
    body_part: str | None = None

    def fits(self, header: dict[str, str]) -> bool:
        """True when the series ``header`` (keys ``modality``, ``series_description``,
        ``body_part``) fits every key given."""
        for key in ("modality", "body_part"):
            wanted = getattr(self, key)
            if wanted is not None and wanted.upper() != header.get(key, "").strip().upper():
                return False
        pattern = self.series_description
        return pattern is None or re.search(pattern, header.get("series_description", "")) \
            is not None


@dataclass
class Route:
    """A model for the series its ``match`` fits, and what to send back (``format``)."""

    match: Match = field(default_factory=Match)
    model: str = ""
    format: str = "seg"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DicomwebAuth:
    """Credentials for a DICOMweb destination: HTTP basic auth (``username`` and
    ``password_env``, the environment variable holding the password) or a bearer token
    (``token_env``). The config names variables, never secrets."""

    username: str | None = None
    password_env: str | None = None
    token_env: str | None = None


@dataclass
class Destination:
    """Where results go: a C-STORE SCP (``ae_title``, ``host``, ``port``) or a DICOMweb
    service (``dicomweb``: its base URL, results stored with STOW-RS; ``auth``: its
    credentials, ``ca_cert``: the CA bundle its https certificate must chain to)."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    dicomweb: str | None = None
    auth: DicomwebAuth | None = None
    ca_cert: str | None = None

    @property
    def is_dicomweb(self) -> bool:
        return self.dicomweb is not None

    def access(self, source: str | None = None, environ=None):
        """The credentials and CA bundle of a DICOMweb destination
        (:class:`medseg.serve.dicomweb.DicomwebAccess`), the secrets read from the
        environment now (``environ``: default ``os.environ``). The node calls it when it
        starts; ``--status`` never needs the secrets.

        Raises
        ------
        ConfigError : naming ``source``: an environment variable ``auth`` names is not set.
        """
        from medseg.serve.dicomweb import DicomwebAccess

        env = os.environ if environ is None else environ
        auth = self.auth or DicomwebAuth()
        secrets = {}
        for key, variable in (("password", auth.password_env), ("token", auth.token_env)):
            if variable is not None:
                if not env.get(variable):
                    raise ConfigError(f"destination.auth.{key}_env: the environment variable "
                                      f"{variable} is not set", source)
                secrets[key] = env[variable]
        return DicomwebAccess(username=auth.username, ca_cert=self.ca_cert, **secrets)


@dataclass
class Tls:
    """DICOM over TLS for receiving: this node's certificate and key (PEM files), and the
    CA whose certificates callers must present (optional: without it any caller's
    certificate is accepted, and the AE title list alone decides)."""

    certificate: str = ""
    key: str = ""
    ca: str | None = None

    def server_context(self, source: str | None = None) -> ssl.SSLContext:
        """The TLS context for receiving: this node's certificate and key; with ``ca``
        callers must present a certificate that CA signed.

        Raises
        ------
        ConfigError
            naming ``source`` (the config file) and the PEM files: one cannot be read, is
            not PEM, or the key does not belong to the certificate.
        """
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca or None)
            context.load_cert_chain(self.certificate, self.key)
        except OSError as exc:  # ssl.SSLError is one
            files = f"certificate {self.certificate}, key {self.key}" + (
                f", ca {self.ca}" if self.ca else "")
            raise ConfigError(f"tls: cannot load {files}: {exc.strerror or exc}", source) \
                from None
        context.verify_mode = ssl.CERT_REQUIRED if self.ca else ssl.CERT_NONE
        return context


@dataclass
class ServeConfig:
    """Everything ``medseg serve`` needs (module docstring: the keys and their defaults)."""

    ae_title: str = "MEDSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)
    spool: str = "spool"
    series_timeout_s: float = 30.0
    routes: list[Route] = field(default_factory=list)
    destination: Destination = field(default_factory=Destination)
    max_spool_gb: float = 20.0
    tls: Tls | None = None
    retention_h: float = 24.0
    max_associations: int = 32
    acse_timeout_s: float = 30.0
    network_timeout_s: float = 60.0
    dimse_timeout_s: float = 30.0
    queue_size: int = 4
    send_attempts: int = 5
    retry_s: float = 30.0
    device: str = "auto"
    log: str | None = None
    source: str | None = None

    @property
    def spool_path(self) -> Path:
        return Path(self.spool)

    @property
    def log_path(self) -> Path:
        return Path(self.log) if self.log else self.spool_path / "serve.jsonl"

    @property
    def max_spool_bytes(self) -> int:
        return int(self.max_spool_gb * 1e9)


def load_serve_config(path: str | os.PathLike) -> ServeConfig:
    """Read and check a ``medseg serve`` YAML (relative paths: against its folder)."""
    return parse_serve_config(read_yaml(path, "serve config"), path)


def parse_serve_config(raw: dict[str, Any], source: str | os.PathLike | None = None
                       ) -> ServeConfig:
    """Check a parsed serve config and build it.

    Raises
    ------
    ConfigError
        naming ``source``: an unknown key (with the closest valid one), a value of the wrong
        type, an invalid AE title, port, regular expression, format or route option, no
        route, no allowed calling AE title, or a destination that is neither C-STORE nor
        DICOMweb.
    """
    src = None if source is None else os.fspath(source)
    cfg: ServeConfig = build_section(ServeConfig, raw, "", src)
    cfg.source = src
    _check(cfg, src)
    base = Path(src).resolve().parent if src else Path.cwd()
    cfg.spool = str(_resolve(cfg.spool, base))
    if cfg.log:
        cfg.log = str(_resolve(cfg.log, base))
    if cfg.destination.ca_cert:
        cfg.destination.ca_cert = str(_resolve(cfg.destination.ca_cert, base))
        if not Path(cfg.destination.ca_cert).is_file():
            raise ConfigError(f"destination.ca_cert = {cfg.destination.ca_cert!r}: no such "
                              "file (a PEM bundle of CA certificates)", src)
    if cfg.tls is not None:
        for key in ("certificate", "key", "ca"):
            if getattr(cfg.tls, key):
                setattr(cfg.tls, key, str(_resolve(getattr(cfg.tls, key), base)))
        cfg.tls.server_context(src)  # the PEM files load, or a one-line ConfigError now
    for route in cfg.routes:
        route.model = resolve_model(route.model, base)
    return cfg


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def resolve_model(model: str, base: Path) -> str:
    """A route's model with a relative path made absolute (``nnunet:FOLDER`` too)."""
    prefix, sep, rest = model.partition(":")
    if sep and prefix == "nnunet":
        return f"nnunet:{_resolve(rest, base)}"
    return ",".join(str(_resolve(part.strip(), base)) for part in model.split(","))


def _check(cfg: ServeConfig, src: str | None) -> None:
    check_ae_title(cfg.ae_title, "ae_title", src)
    _require(0 <= cfg.port <= 65535, "port", cfg.port, "0..65535 (0: any free port)", src)
    if not cfg.allowed_calling_aets:
        raise ConfigError("allowed_calling_aets is empty: list the AE titles that may send "
                          "series (the PACS or router), so that no stranger gets in", src)
    for i, aet in enumerate(cfg.allowed_calling_aets):
        check_ae_title(aet, f"allowed_calling_aets[{i}]", src)
    for key in ("series_timeout_s", "max_spool_gb", "retention_h", "retry_s", "acse_timeout_s",
                "network_timeout_s", "dimse_timeout_s"):
        _require(getattr(cfg, key) > 0, key, getattr(cfg, key), "> 0", src)
    for key in ("queue_size", "send_attempts", "max_associations"):
        _require(getattr(cfg, key) >= 1, key, getattr(cfg, key), ">= 1", src)
    if not cfg.routes:
        raise ConfigError("routes is empty: give at least one {match, model, format}", src)
    for i, route in enumerate(cfg.routes):
        _check_route(route, f"routes[{i}]", src)
    _check_destination(cfg.destination, src)
    if cfg.tls is not None and not (cfg.tls.certificate and cfg.tls.key):
        raise ConfigError("tls needs 'certificate' and 'key' (PEM files); 'ca' is optional",
                          src)


def _check_route(route: Route, where: str, src: str | None) -> None:
    if not route.model:
        raise ConfigError(f"{where}.model is missing: a checkpoint, run folder or "
                          "nnunet:FOLDER, as for `medseg predict -m`", src)
    check_option(route.format, FORMATS, f"{where}.format", ConfigError, src)
    if route.match.series_description is not None:
        try:
            re.compile(route.match.series_description)
        except re.error as exc:
            raise ConfigError(f"{where}.match.series_description = "
                              f"{route.match.series_description!r}: not a regular expression "
                              f"({exc})", src) from None
    try:
        check_keywords(route.options, ROUTE_OPTIONS, f"{where}.options")
        route_options(route)
    except UsageError as exc:
        raise ConfigError(exc.message, src) from None


def route_options(route: Route):  # -> PredictOptions
    """The :class:`~medseg.inference.predict.PredictOptions` of ``route`` (UsageError when a
    value is out of range)."""
    from medseg.inference.predict import PredictOptions

    names = {f.name for f in dataclasses.fields(PredictOptions)}
    return PredictOptions(**{k: v for k, v in route.options.items() if k in names})


def _check_destination(dest: Destination, src: str | None) -> None:
    scu = (dest.ae_title, dest.host, dest.port)
    if dest.dicomweb is not None:
        if any(v is not None for v in scu):
            raise ConfigError("destination: give either {ae_title, host, port} (C-STORE) or "
                              "{dicomweb: URL} (STOW-RS), not both", src)
        if not re.match(r"https?://", dest.dicomweb):
            raise ConfigError(f"destination.dicomweb = {dest.dicomweb!r}: expected an http:// "
                              "or https:// URL", src)
        if dest.ca_cert and not dest.dicomweb.startswith("https://"):
            raise ConfigError("destination.ca_cert is for an https:// URL; "
                              f"destination.dicomweb is {dest.dicomweb!r}", src)
        if dest.auth is not None:
            _check_auth(dest.auth, src)
        return
    for key in ("auth", "ca_cert"):
        if getattr(dest, key) is not None:
            raise ConfigError(f"destination.{key} is for a DICOMweb destination "
                              "({dicomweb: URL}), not for C-STORE", src)
    if any(v is None for v in scu):
        missing = [k for k, v in zip(("ae_title", "host", "port"), scu) if v is None]
        raise ConfigError(f"destination lacks {', '.join(missing)}: give {{ae_title, host, "
                          "port}} (C-STORE) or {dicomweb: URL} (STOW-RS)", src)
    check_ae_title(dest.ae_title, "destination.ae_title", src)
    _require(1 <= dest.port <= 65535, "destination.port", dest.port, "1..65535", src)


def _check_auth(auth: DicomwebAuth, src: str | None) -> None:
    """Basic auth (username and password_env) or a token (token_env); whether the variables
    are set is checked when the node starts (:meth:`Destination.access`)."""
    basic = auth.username is not None or auth.password_env is not None
    if basic == (auth.token_env is not None):
        raise ConfigError("destination.auth: give {username, password_env} (HTTP basic auth) "
                          "or {token_env} (a bearer token)", src)
    if basic and not (auth.username and auth.password_env):
        missing = "password_env" if auth.username else "username"
        raise ConfigError(f"destination.auth lacks {missing}: basic auth needs username and "
                          "password_env (the environment variable holding the password)", src)


def check_ae_title(value: str, key: str, src: str | None) -> None:
    """An AE title as PS3.5 allows it: 1-16 characters of printable ASCII, no backslash,
    not only spaces."""
    ok = (0 < len(value) <= 16 and value.strip() != "" and "\\" not in value
          and all(32 <= ord(c) < 127 for c in value))
    _require(ok, key, value, "an AE title (1-16 printable ASCII characters, no backslash)", src)


def _require(ok: bool, key: str, value: Any, expected: str, src: str | None) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {expected}", src)
