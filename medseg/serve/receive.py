"""The Storage SCP: pynetdicom listening as the node's AE title.

Association policy is the AE's (``require_calling_aet``: an AE title that is not in
``allowed_calling_aets`` is rejected while associating, before any data arrives), and each
event has one small handler, as in pynetdicom's Storage SCP examples: C-STORE hands the
instance's bytes to the node (which writes them to the spool durably) and returns the
status; C-ECHO answers; a rejected association is logged with its reason
(:func:`rejection_reason`: pynetdicom's event does not carry it); the end of an association
is told to the node, with whether it was aborted (by the peer, or by this node when nothing
arrived for ``network_timeout_s``) in the middle of an instance (:func:`_in_mid_message`).

Timeouts (pynetdicom's, from the config): a caller that connects and never asks for an
association is dropped after ``acse_timeout_s``; an association on which nothing arrives for
``network_timeout_s``, idle or stalled inside an instance, is aborted. Neither keeps one of
the ``max_associations`` slots for longer.

With ``tls`` the TLS handshake runs in the association's own thread (:func:`_server_class`),
not in pynetdicom's one accepting thread, where a caller that opens a TCP connection and
says nothing kept every other association out; a failed or silent handshake is rejected
and logged like an unknown AE title.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable

from medseg.serve.config import ServeConfig

__all__ = ["STATUS", "rejection_reason", "start_scp"]

log = logging.getLogger(__name__)

#: C-STORE statuses the node answers (PS3.4 B.2.3 and Annex C).
STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,   # the spool is full
    "cannot_understand": 0xC000,  # not DICOM, or UIDs that are not UIDs
    "processing_failure": 0x0110,  # the spool could not be written
}


def rejection_reason(cfg: ServeConfig, calling_aet: str, called_aet: str) -> str:
    """Why the SCP rejected an association from ``calling_aet`` to ``called_aet``, in the
    order pynetdicom's acceptor checks them: calling AE title, called AE title, then its
    local limit of ``max_associations``."""
    if calling_aet not in cfg.allowed_calling_aets:
        return "calling AE title not in allowed_calling_aets"
    if called_aet != cfg.ae_title.strip():
        return f"called AE title {called_aet!r} is not this node's ({cfg.ae_title!r})"
    return f"more than max_associations ({cfg.max_associations}) associations at once"


def start_scp(cfg: ServeConfig, on_store: Callable, on_rejected: Callable,
              on_ended: Callable):
    """Start the Storage SCP in its own threads; returns pynetdicom's server (``shutdown()``).

    ``on_store(event) -> int`` takes a pynetdicom C-STORE event and returns its status;
    ``on_rejected(calling_aet, address, reason)`` is told of each rejected association
    (``calling_aet`` is empty when the TLS handshake failed, before any DICOM arrived);
    ``on_ended(assoc, aborted, mid_instance)`` of each association's end (released, or
    aborted, and then whether an instance was arriving).
    """
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=cfg.ae_title)
    ae.require_calling_aet = list(cfg.allowed_calling_aets)
    ae.require_called_aet = True
    ae.maximum_associations = cfg.max_associations
    ae.acse_timeout = cfg.acse_timeout_s
    ae.network_timeout = cfg.network_timeout_s
    ae.dimse_timeout = cfg.dimse_timeout_s
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)

    def rejected(event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title).strip()
        called = str(requestor.primitive.called_ae_title).strip()
        on_rejected(calling, f"{requestor.address}:{requestor.port}",
                    rejection_reason(cfg, calling, called))

    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_REJECTED, rejected),
                (evt.EVT_RELEASED, lambda event: on_ended(event.assoc, False, False)),
                (evt.EVT_ABORTED, lambda event: on_ended(event.assoc, True,
                                                         _in_mid_message(event.assoc)))]
    server = ae.make_server((cfg.host, cfg.port), ssl_context=cfg.tls and cfg.tls.server_context(cfg.source),
                            evt_handlers=handlers,
                            server_class=_server_class(on_rejected, ae.acse_timeout))
    ae._servers.append(server)  # as AE.start_server does: server.shutdown() takes it out
    threading.Thread(target=server.serve_forever, name="medseg-scp", daemon=True).start()
    return server


def _in_mid_message(assoc) -> bool:
    """Whether part of a DIMSE message (a C-STORE's command or dataset fragments) had
    arrived on ``assoc`` when it ended: pynetdicom's DIMSE provider keeps the message being
    assembled in ``dimse.message`` and resets it to None once a message is complete."""
    dimse = getattr(assoc, "dimse", None)
    return getattr(dimse, "message", None) is not None


def _server_class(on_rejected: Callable, handshake_timeout_s: float):
    """pynetdicom's threaded association server with the TLS handshake moved from the
    accepting thread (its ``get_request`` wraps the socket with the handshake on connect,
    without a timeout) into the association's thread, within ``handshake_timeout_s``."""
    from pynetdicom.transport import ThreadedAssociationServer

    class Server(ThreadedAssociationServer):
        def get_request(self):
            client, address = self.socket.accept()
            if self.ssl_context:
                client = self.ssl_context.wrap_socket(client, server_side=True,
                                                      do_handshake_on_connect=False)
            return client, address

        def finish_request(self, request, client_address) -> None:
            if isinstance(request, ssl.SSLSocket):
                timeout = request.gettimeout()
                request.settimeout(handshake_timeout_s)
                try:
                    request.do_handshake()
                except OSError as exc:  # ssl.SSLError and TimeoutError are OSErrors
                    on_rejected("", f"{client_address[0]}:{client_address[1]}",
                                f"TLS handshake failed: {' '.join(str(exc).split()) or 'closed'}")
                    self.shutdown_request(request)
                    return
                request.settimeout(timeout)
            super().finish_request(request, client_address)

    return Server
