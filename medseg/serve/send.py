"""Sending a result: C-STORE to a DICOM node (pynetdicom) or STOW-RS to a DICOMweb service
(dicomweb-client, through :func:`medseg.serve.dicomweb.dicomweb_client`).

Both raise :class:`SendError` with one line when the destination does not take the
object; the node then keeps the job in ``sending`` and tries again later. Since a result's
SOP Instance UID depends only on its source series and model
(:func:`medseg.serve.process.result_uids`), an object that reached the PACS before the
node was killed is replaced, not doubled, when it is sent again.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from medseg.errors import MedsegError
from medseg.serve.config import Destination

__all__ = ["SendAuthError", "SendError", "send_result", "store_scu", "stow_rs"]

log = logging.getLogger(__name__)

#: C-STORE statuses that mean "stored": success and the warnings of PS3.4 B.2.3.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(MedsegError):
    """The destination did not take a result (refused, unreachable, or an error status)."""


class SendAuthError(SendError):
    """The DICOMweb destination refused the credentials (HTTP 401 or 403)."""


def send_result(path: Path, destination: Destination, calling_aet: str,
                ssl_context: ssl.SSLContext | None = None,
                timeouts_s: tuple[float, float, float] | None = None, access=None) -> None:
    """Send the DICOM file ``path`` to ``destination`` (C-STORE or STOW-RS, the latter with
    ``access``: :meth:`medseg.serve.config.Destination.access`)."""
    if destination.is_dicomweb:
        stow_rs(path, destination.dicomweb, access)
    else:
        store_scu(path, destination, calling_aet, ssl_context, timeouts_s)


def store_scu(path: Path, destination: Destination, calling_aet: str,
              ssl_context: ssl.SSLContext | None = None,
              timeouts_s: tuple[float, float, float] | None = None) -> None:
    """C-STORE ``path`` to ``destination`` as ``calling_aet`` in one association;
    ``timeouts_s``: pynetdicom's (ACSE, DIMSE, network) timeouts in seconds (default: its
    own, 30, 30 and 60).

    Raises
    ------
    SendError : the association is rejected or aborted, or the status is not a success.
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    from medseg.io.dicom.files import read_dataset

    ds = read_dataset(path, "result")
    ae = AE(ae_title=calling_aet)
    if timeouts_s is not None:
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = timeouts_s
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    tls_args = (ssl_context, None) if ssl_context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls_args)
    if not assoc.is_established:
        raise SendError(f"association with {where} not established (rejected, aborted or "
                        "unreachable)", path)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code not in STORED:
        raise SendError(f"C-STORE to {where} answered status "
                        f"{'none' if code < 0 else hex(code)}", path)


def stow_rs(path: Path, url: str, access=None) -> None:
    """Store ``path`` with STOW-RS at the DICOMweb service ``url`` (dicomweb-client), with
    ``access``'s credentials and CA bundle (:class:`medseg.serve.dicomweb.DicomwebAccess`).

    Raises
    ------
    SendError : the service is unreachable or answers an HTTP error.
    """
    from medseg.io.dicom.files import read_dataset
    from medseg.serve.dicomweb import (
        DicomwebAuthError,
        DicomwebError,
        answering,
        dicomweb_client,
    )

    dataset = read_dataset(path, "result")
    try:
        with answering(url, "STOW-RS"):
            dicomweb_client(url, access).store_instances([dataset])
    except DicomwebError as exc:
        error = SendAuthError if isinstance(exc, DicomwebAuthError) else SendError
        raise error(exc.message, path) from exc
