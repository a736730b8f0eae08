"""DICOM over TLS (``tls: {certificate, key, ca}``): a certificate authority, the node's
certificate and a modality's are made in the test with the openssl command; a modality
that presents a certificate the CA signed associates over TLS and its series comes back
from a real Orthanc as a DICOM-SEG; a plain association, and a TLS one without a client
certificate, are refused and logged; a caller that opens a connection and says nothing
keeps no one else out."""

from __future__ import annotations

import socket
import ssl

import pydicom
import pytest

from .conftest import FEW_SLICES
from .serve_helpers import NODE_AET, copy_series, push, segs_for, start_node, wait_done


def _client_context(pki, with_certificate: bool) -> ssl.SSLContext:
    """A modality's TLS context: it checks the node's certificate against the CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    if with_certificate:
        context.load_cert_chain(str(pki["client"]), str(pki["client_key"]))
    return context


def _echo(port: int, tls_args=None) -> bool:
    """Whether an association (C-ECHO) with the node as TESTSCU is established."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, tls_args=tls_args)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return ok


def test_tls_association_with_a_ca_signed_certificate_and_no_plain_one(
        orthanc, small_model, ct_files, nodes, tmp_path, pki):
    node = start_node(nodes, tmp_path, small_model, orthanc, tls={
        "certificate": str(pki["node"]), "key": str(pki["node_key"]), "ca": str(pki["ca"])})
    assert _echo(node.port) is False  # plain DICOM on the TLS port
    assert _echo(node.port, (_client_context(pki, False), "localhost")) is False  # no client cert
    tls_args = (_client_context(pki, True), "localhost")
    files, uid = copy_series(ct_files, tmp_path / "tls", "tls", keep=lambda i: i in FEW_SLICES)
    datasets = [pydicom.dcmread(f) for f in files]
    with socket.create_connection(("127.0.0.1", node.port)):  # connected, silent
        assert _echo(node.port, tls_args) is True
        assert push(node.port, datasets, tls_args=tls_args) == [0x0000] * len(datasets)
    wait_done(node, uid)
    (seg,) = segs_for(orthanc, uid)
    assert {r.ReferencedSOPInstanceUID
            for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {str(ds.SOPInstanceUID) for ds in datasets}
    reasons = [e["reason"] for e in node.events() if e["event"] == "rejected"]
    assert len(reasons) == 3, reasons  # plain, no client certificate, the silent one's close
    assert all(r.startswith("TLS handshake failed: ") for r in reasons), reasons
    assert any("WRONG_VERSION_NUMBER" in r for r in reasons), reasons
    assert any("CERTIFICATE" in r for r in reasons), reasons
    # nothing of the refused handshakes reached the spool or the jobs
    assert node.status().splitlines()[0] == \
        "receiving 0  queued 0  running 0  sending 0  done 1  failed 0"


@pytest.mark.parametrize("broken", ["missing key", "key of another certificate", "not PEM"])
def test_unusable_tls_files_are_one_config_error(tmp_path, pki, broken, capsys):
    import yaml

    from medseg.cli import main

    key = {"missing key": tmp_path / "absent.key", "key of another certificate":
           pki["client_key"], "not PEM": pki["node"].with_suffix(".csr").with_name("node.ext")}
    config = {"allowed_calling_aets": ["ORTHANC"], "routes": [{"model": "m.safetensors"}],
              "destination": {"ae_title": "PACS", "host": "h", "port": 104},
              "tls": {"certificate": str(pki["node"]), "key": str(key[broken])}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["serve", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medseg: error: {path}: tls: cannot load "
                                               f"certificate {pki['node']}, key {key[broken]}")
