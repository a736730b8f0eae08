"""Test certificates made with the openssl command: a CA, and certificates it signs (the
node's and a modality's for DICOM over TLS, Orthanc's for HTTPS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(name: str, cn: str, extensions: str, folder: Path) -> tuple[Path, Path]:
    """A P-256 key and a certificate for ``cn`` that ``ca.pem`` signs: (certificate, key)."""
    (folder / f"{name}.ext").write_text(extensions + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA (``ca``), a server certificate for localhost and 127.0.0.1 (``node``,
    ``node_key``) and a client's (TESTSCU: ``client``, ``client_key``) under ``folder``."""
    folder.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=medseg test CA", cwd=folder)
    node_pem, node_key = _signed("node", "localhost", "subjectAltName=DNS:localhost,"
                                 "IP:127.0.0.1\nextendedKeyUsage=serverAuth", folder)
    client_pem, client_key = _signed("client", "TESTSCU", "extendedKeyUsage=clientAuth", folder)
    return {"ca": folder / "ca.pem", "node": node_pem, "node_key": node_key,
            "client": client_pem, "client_key": client_key}
