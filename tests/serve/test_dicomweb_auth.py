"""DICOMweb with credentials and HTTPS: a real Orthanc that requires HTTP basic auth
(``AuthenticationEnabled``, ``RegisteredUsers``), reached over HTTPS with a certificate
made in the test by the openssl command and signed by the test's CA (TLS is terminated in
front of Orthanc by :class:`orthanc_server.HttpsFront`: the packaged Orthanc crashes on its
own ``SslEnabled``).

`medseg predict` pulls and stores with the credentials and CA bundle of the
``MEDSEG_DICOMWEB_*`` environment variables; `medseg serve` stores with STOW-RS with those
of its config (the password named by an environment variable). A wrong password is one
line naming the server and HTTP 401, and nothing is written; no secret reaches a message,
stderr or the JSON-lines log. A bearer token is checked on the wire against a small local
HTTP server (Orthanc has no token auth of its own)."""

from __future__ import annotations

import http.server
import secrets
import threading

import pydicom
import pytest
import yaml

from medseg.cli import main
from medseg.errors import ConfigError
from medseg.serve.config import parse_serve_config
from medseg.serve.dicomweb import DicomwebAccess, DicomwebAuthError, list_series, parse_location

from .conftest import FEW_SLICES
from .orthanc_server import HttpsFront, Orthanc, free_port, wait_until
from .serve_helpers import WAIT_S, NodeProcess, copy_series, push, segs_for

USER = "medseg"


@pytest.fixture
def secure_orthanc(orthanc, pki, tmp_path):
    """Orthanc with basic auth (user ``medseg``, a random password), its password, and the
    HTTPS port in front of it. (After the plain ``orthanc`` fixture, which checks that
    Orthanc is here.)"""
    if not orthanc.has_dicomweb:
        pytest.skip("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is absent")
    password = secrets.token_hex(8)
    server = Orthanc(tmp_path / "secure", users={USER: password})
    front = HttpsFront(server.url, pki["node"], pki["node_key"])
    yield server, password, front.port
    front.stop()
    server.stop()


def _predict(*args: str) -> int:
    return main(["predict", *args, "--device", "cpu"])


def _instances(orthanc) -> int:
    return int(orthanc.get("/statistics")["CountInstances"])


def _use(monkeypatch, pki, password: str | None) -> None:
    monkeypatch.setenv("MEDSEG_DICOMWEB_USERNAME", USER)
    monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", password)
    monkeypatch.setenv("MEDSEG_DICOMWEB_CA_CERT", str(pki["ca"]))


def test_pull_over_https_with_basic_auth(secure_orthanc, pki, small_model, ct_files, tmp_path,
                                         monkeypatch, capfd):
    orthanc, password, https_port = secure_orthanc
    files, uid = copy_series(ct_files, tmp_path / "series", "https pull",
                             keep=lambda i: i in FEW_SLICES)
    orthanc.upload(files)
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    base = f"dicomwebs://127.0.0.1:{https_port}/dicom-web"
    server = f"https://127.0.0.1:{https_port}/dicom-web"
    source = f"{base}?StudyInstanceUID={study}"

    wrong = secrets.token_hex(8)
    _use(monkeypatch, pki, wrong)
    capfd.readouterr()
    for args in (("-i", source, "-o", base),  # QIDO-RS refused
                 ("-i", str(files[0].parent), "-o", base)):  # STOW-RS refused
        assert _predict("-m", str(small_model), *args) == 1
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("medseg: error:"), err
        assert server in err[0] and "HTTP 401" in err[0] and wrong not in err[0], err
    assert _instances(orthanc) == len(files)  # nothing stored

    _use(monkeypatch, pki, password)
    monkeypatch.delenv("MEDSEG_DICOMWEB_CA_CERT")  # the test CA is no system CA
    assert _predict("-m", str(small_model), "-i", source, "-o", base) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CERTIFICATE_VERIFY_FAILED" in err[0], err

    _use(monkeypatch, pki, password)
    assert _predict("-m", str(small_model), "-i", source, "-o", base) == 0
    (seg,) = segs_for(orthanc, uid)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0]
            .ReferencedInstanceSequence} == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert password not in capfd.readouterr().err


def test_node_stores_over_https_with_basic_auth(secure_orthanc, pki, small_model, ct_files,
                                                tmp_path, monkeypatch):
    orthanc, password, https_port = secure_orthanc
    monkeypatch.setenv("PACS_PASSWORD", password)
    monkeypatch.setenv("PACS_WRONG", secrets.token_hex(8))
    url = f"https://127.0.0.1:{https_port}/dicom-web"
    nodes = []
    try:
        for name, variable in (("good", "PACS_PASSWORD"), ("wrong", "PACS_WRONG")):
            node = NodeProcess(tmp_path / name, small_model, None, send_attempts=1,
                               destination={"dicomweb": url, "ca_cert": str(pki["ca"]),
                                            "auth": {"username": USER,
                                                     "password_env": variable}})
            nodes.append(node)
            node.start()
        good, wrong = nodes
        series = {}
        for node in nodes:
            files, uid = copy_series(ct_files, tmp_path / f"s-{node.folder.name}",
                                     f"https node {node.folder.name}",
                                     keep=lambda i: i in FEW_SLICES)
            assert set(push(node.port, [pydicom.dcmread(f) for f in files])) == {0x0000}
            series[node.folder.name] = uid
        end = wait_until(lambda: good.finished(series["good"]), WAIT_S, "the good node's job")
        assert end["event"] == "done"
        assert len(segs_for(orthanc, series["good"])) == 1
        end = wait_until(lambda: wrong.finished(series["wrong"]), WAIT_S, "the wrong one's")
        assert end["event"] == "failed"
        assert end["reason"].startswith(f"not sent after 1 attempts: STOW-RS at {url} failed: "
                                        "HTTP 401")
        assert segs_for(orthanc, series["wrong"]) == []
        for node in nodes:
            written = (node.folder / "spool" / "serve.jsonl").read_text() + \
                (node.folder / "stderr.log").read_text() + "\n".join(node.lines)
            assert password not in written and "PACS_WRONG" not in written
    finally:
        for node in nodes:
            node.stop()


class _Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request 401 and keeps its Authorization header."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Refusing.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_bearer_token_is_sent_and_a_refusal_is_one_line(small_model, monkeypatch, capfd,
                                                          tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        location = parse_location(f"dicomweb://127.0.0.1:{port}/dw?StudyInstanceUID=1.2.3")
        with pytest.raises(DicomwebAuthError) as info:
            list_series(location, DicomwebAccess(token="t0ken"))
        assert str(info.value) == (f"QIDO-RS (search for series) at http://127.0.0.1:{port}/dw "
                                   "failed: HTTP 401 Unauthorized (the credentials were "
                                   "refused or are missing: check the user name, password "
                                   "or token)")
        monkeypatch.setenv("MEDSEG_DICOMWEB_TOKEN", "t1ken")
        capfd.readouterr()
        assert _predict("-m", str(small_model), "-i", f"dicomweb://127.0.0.1:{port}/dw?"
                        "StudyInstanceUID=1.2.3", "-o", str(tmp_path / "out")) == 1
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "HTTP 401" in err[0] and "t1ken" not in err[0], err
        assert not (tmp_path / "out").exists()
    finally:
        server.shutdown()
    assert _Refusing.seen == ["Bearer t0ken", "Bearer t1ken"]
    assert "t0ken" not in repr(DicomwebAccess(token="t0ken"))


BASE = {"allowed_calling_aets": ["ORTHANC"], "routes": [{"model": "m.safetensors"}]}


@pytest.mark.parametrize("destination, message", [
    ({"dicomweb": "http://p/dw", "auth": {"usernme": "u"}},
     "unknown key 'destination.auth.usernme'; did you mean 'destination.auth.username'?"),
    ({"dicomweb": "http://p/dw", "ca_certs": "ca.pem"},
     "unknown key 'destination.ca_certs'; did you mean 'destination.ca_cert'?"),
    ({"dicomweb": "http://p/dw", "auth": {"username": "u"}}, "destination.auth lacks "
     "password_env"),
    ({"dicomweb": "http://p/dw", "auth": {"username": "u", "password_env": "P",
                                          "token_env": "T"}},
     "destination.auth: give {username, password_env} (HTTP basic auth) or {token_env}"),
    ({"dicomweb": "http://p/dw", "ca_cert": "ca.pem"}, "destination.ca_cert is for an https://"),
    ({"ae_title": "PACS", "host": "h", "port": 104, "auth": {"token_env": "T"}},
     "destination.auth is for a DICOMweb destination"),
    ({"dicomweb": "https://p/dw", "ca_cert": "absent.pem"}, "absent.pem': no such file"),
])
def test_dicomweb_destination_config_errors(tmp_path, destination, message):
    with pytest.raises(ConfigError) as info:
        parse_serve_config({**BASE, "destination": destination}, tmp_path / "serve.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'serve.yaml'}: ")
    assert message in str(info.value)


def test_an_unset_password_variable_stops_the_node_not_status(tmp_path, small_model, capsys,
                                                               monkeypatch):
    monkeypatch.delenv("MEDSEG_NO_SUCH_VARIABLE", raising=False)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({
        **BASE, "routes": [{"model": str(small_model)}], "port": free_port(),
        "destination": {"dicomweb": "http://127.0.0.1:9/dw", "auth": {
            "username": USER, "password_env": "MEDSEG_NO_SUCH_VARIABLE"}}}))
    assert main(["serve", str(path), "--status"]) == 0
    capsys.readouterr()
    assert main(["serve", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"medseg: error: {path}: destination.auth.password_env: the environment "
                   "variable MEDSEG_NO_SUCH_VARIABLE is not set"]

