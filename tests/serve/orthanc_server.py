"""A real Orthanc for the node's tests: started on free loopback ports with its own JSON
configuration and storage folder, driven through its REST API (requests)."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll ``check()`` until it returns a truthy value; fail naming ``what`` after
    ``timeout_s`` (a guard against hanging, not a speed assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


class Orthanc:
    """One Orthanc process under ``folder``; ``url`` is its REST API, ``dicom_port`` its SCP.

    ``users`` (name -> password): HTTP basic auth required of every request
    (``AuthenticationEnabled``, ``RegisteredUsers``), the first user's sent by ``http``;
    ``certificate`` (a PEM file holding the certificate and its key) and ``ca``: HTTPS
    only (``SslEnabled``), ``http`` checking the certificate against ``ca``.
    """

    def __init__(self, folder: Path, users: dict[str, str] | None = None,
                 certificate: Path | None = None, ca: Path | None = None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.scheme = "https" if certificate else "http"
        self.url = f"{self.scheme}://127.0.0.1:{self.http_port}"
        self.http = requests.Session()
        if users:
            self.http.auth = next(iter(users.items()))
        if ca:
            self.http.verify = str(ca)
        config = {
            "Name": "medseg-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "SslEnabled": certificate is not None,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "DicomScuTimeout": 30,
            "DicomModalities": {},
        }
        if certificate is not None:
            config["SslCertificate"] = str(certificate)
        if DICOMWEB_PLUGIN.is_file():
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log = open(folder / "orthanc.log", "wb")  # closed in stop()
        self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, 60, "Orthanc's REST API")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()}")
        try:
            return self.http.get(f"{self.url}/system", timeout=2).ok
        except requests.ConnectionError:
            return False

    @property
    def has_dicomweb(self) -> bool:
        return self.http.get(f"{self.url}/dicom-web/studies", timeout=10).ok

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    # -- REST ------------------------------------------------------------------------------------
    def get(self, path: str):
        response = self.http.get(f"{self.url}{path}", timeout=60)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") \
            else response.content

    def post(self, path: str, body, raw: bool = False):
        data = body if raw else json.dumps(body)
        response = self.http.post(f"{self.url}{path}", data=data, timeout=300)
        return response

    def upload(self, files) -> list[dict]:
        """POST /instances for each file; the answers (``ID``, ``ParentSeries`` ...)."""
        out = []
        for path in files:
            response = self.post("/instances", Path(path).read_bytes(), raw=True)
            response.raise_for_status()
            out.append(response.json())
        return out

    def add_modality(self, name: str, aet: str, port: int) -> None:
        response = self.http.put(f"{self.url}/modalities/{name}", timeout=10, data=json.dumps(
            {"AET": aet, "Host": "127.0.0.1", "Port": port}))
        response.raise_for_status()

    def store(self, modality: str, resources: list[str], synchronous: bool = True):
        """Ask Orthanc to C-STORE ``resources`` (Orthanc IDs) to ``modality``."""
        return self.post(f"/modalities/{modality}/store",
                         {"Resources": resources, "Synchronous": synchronous})

    def find_series(self, query: dict) -> list[dict]:
        response = self.post("/tools/find", {"Level": "Series", "Query": query, "Expand": True})
        response.raise_for_status()
        return response.json()

    def seg_instances(self, modality: str = "SEG") -> list[str]:
        """Orthanc IDs of every instance of every SEG (or ``modality``) series it holds."""
        ids = []
        for series in self.find_series({"Modality": modality}):
            ids.extend(series["Instances"])
        return ids

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")


class HttpsFront:
    """HTTPS in front of a plain HTTP server (Orthanc): every request is read whole,
    forwarded to ``target`` (``http://127.0.0.1:PORT``) and its answer written back, over
    TLS with ``certificate`` and ``key`` (PEM). ``port`` is where it listens.

    Why not Orthanc's own ``SslEnabled``: the Debian package's Orthanc 1.10.1 starts with it
    but its civetweb worker segfaults on the first HTTPS request (built for OpenSSL 1.1, run
    with OpenSSL 3), so the tests put Python's TLS (OpenSSL too) in front of it instead; the
    client side (requests checking the certificate against a CA bundle) is the same.
    """

    def __init__(self, target: str, certificate: Path, key: Path) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certificate), str(key))
        handler = type("Forward", (_Forward,), {"target": target})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = ""
    _HOP = {"host", "connection", "content-length", "transfer-encoding", "accept-encoding",
            "keep-alive"}

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self._HOP}
        answer = requests.request(self.command, self.target + self.path, data=self._body(),
                                  headers={**headers, "Accept-Encoding": "identity"},
                                  timeout=300)
        self.send_response(answer.status_code, answer.reason)
        for key, value in answer.headers.items():
            if key.lower() not in self._HOP | {"content-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass
