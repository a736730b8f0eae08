"""``medseg serve CONFIG.yaml``: run a DICOM node (see :mod:`medseg.serve.config` for the keys).

The node listens until SIGTERM or Ctrl-C and prints one line, ``listening on HOST:PORT as
AE_TITLE``, once it accepts associations. ``--status`` prints the jobs in the config's spool
(queued, running, done, failed, with the reason of each failure), the associations rejected
and aborted and the instances refused (from the JSON-lines log), and exits; no node needs
to be running.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("a DICOM node: receive series from a PACS, segment them, send DICOM-SEG / RTSTRUCT "
        "back")


#: The node's config keys (medseg.serve.config), named in ``--help``.
CONFIG_KEYS = ("ae_title, host, port, allowed_calling_aets, spool, series_timeout_s, routes, "
               "destination, max_spool_gb, tls, max_associations, acse_timeout_s, "
               "network_timeout_s, dimse_timeout_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, metavar="CONFIG.yaml",
                        help=f"the node's config: {CONFIG_KEYS}")
    parser.add_argument("--status", action="store_true", help="print the spool's jobs "
                        "(queued, running, done, failed with reasons) and exit")


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from medseg.serve import Node, load_serve_config, spool_jobs
    from medseg.serve.jobs import peer_counts, status_lines

    cfg = load_serve_config(args.config)
    if args.status:
        print("\n".join(status_lines(spool_jobs(cfg), peer_counts(cfg.log_path))))
        return 0
    node = Node(cfg)
    node.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    host, port = node.address
    print(f"listening on {host}:{port} as {cfg.ae_title}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0
