"""A real Orthanc for the node's tests: started on free loopback ports with its own JSON
configuration and storage folder, driven through its REST API (requests)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
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
    """One Orthanc process under ``folder``; ``url`` is its REST API, ``dicom_port`` its SCP."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "medseg-test",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "ConcurrentJobs": 2,
            "DicomScuTimeout": 30,
            "DicomModalities": {},
        }
        if DICOMWEB_PLUGIN.is_file():
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log = open(folder / "orthanc.log", "wb")  # closed in stop()
        self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        wait_until(self._answers, 60, "Orthanc's REST API")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()}")
        try:
            return requests.get(f"{self.url}/system", timeout=2).ok
        except requests.ConnectionError:
            return False

    @property
    def has_dicomweb(self) -> bool:
        return requests.get(f"{self.url}/dicom-web/studies", timeout=10).ok

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
        response = requests.get(f"{self.url}{path}", timeout=60)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") \
            else response.content

    def post(self, path: str, body, raw: bool = False):
        data = body if raw else json.dumps(body)
        response = requests.post(f"{self.url}{path}", data=data, timeout=300)
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
        response = requests.put(f"{self.url}/modalities/{name}", timeout=10, data=json.dumps(
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
