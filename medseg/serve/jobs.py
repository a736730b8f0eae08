"""Jobs of the DICOM node: one received series, its state and its outcome.

A job's life::

    receiving --(series_timeout_s of silence)--> queued --> running --> sending --> done
         \\________________ failed (with a one-line reason) <______________/

The state lives in the spool (``series/<uid>/job.json``, written atomically and fsynced
by :class:`~medseg.serve.spool.Spool`); the node's queue in memory is a cache of it, so a
node killed at any moment continues from these files: ``receiving`` waits again for
silence, ``running`` runs again (the result's UIDs do not change), ``sending`` sends
again. Every transition is also one line of the JSON-lines log (:class:`Journal`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RECEIVING", "QUEUED", "RUNNING", "SENDING", "DONE", "FAILED", "STATES", "Job",
           "Journal", "PEER_EVENTS", "peer_counts", "status_lines"]

log = logging.getLogger(__name__)

RECEIVING, QUEUED, RUNNING, SENDING, DONE, FAILED = (
    "receiving", "queued", "running", "sending", "done", "failed")
STATES = (RECEIVING, QUEUED, RUNNING, SENDING, DONE, FAILED)
#: States in which a job is finished (a new instance of its series starts it again).
FINISHED = (DONE, FAILED)


@dataclass
class Job:
    """One series' job, as ``job.json`` holds it.

    Attributes
    ----------
    series_uid : Series Instance UID (checked against the UID grammar before it names a
        folder).
    state : one of :data:`STATES`.
    header : what routes match on and the log reports: ``modality``, ``series_description``,
        ``body_part``, ``study_uid``, ``calling_aet`` (from the first instance).
    reason : why a failed job failed (one line).
    route : index of the route that took it; ``result`` the result's file name in the spool.
    instances : instances in the spool when it was queued.
    attempts : send attempts made; ``next_try``: when to send again (Unix s).
    late : an instance arrived while it was running or sending: it runs again afterwards.
    purged : its instances and result left the spool after the retention time.
    run : how many times the series was received in full (a resend is a new run).
    previous_instances : instances its earlier run had (0 for the first): a run with
        fewer is not segmented, since its result would replace the complete one.
    interrupted : why the series is known to be incomplete (an association aborted in
        the middle of one of its instances); cleared by the next instance stored.
    defects : SOP Instance UID -> what is wrong with that instance's Pixel Data (an
        instance received again whole clears its entry).
    created, updated : Unix seconds.
    """

    series_uid: str
    state: str = RECEIVING
    header: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    route: int | None = None
    result: str | None = None
    instances: int = 0
    attempts: int = 0
    next_try: float = 0.0
    late: bool = False
    purged: bool = False
    run: int = 1
    previous_instances: int = 0
    interrupted: str = ""
    defects: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Job:
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class Journal:
    """The node's JSON-lines log: one object per event (``time``, ``event``, ``series``
    and the event's fields), appended and flushed as it happens; also sent to
    :mod:`logging` as one line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, sort_keys=False, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
        level = logging.WARNING if event in ("failed", *PEER_EVENTS) else logging.INFO
        log.log(level, "%s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The events of a JSON-lines log (a torn last line, left by a kill, is skipped)."""
    events = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


#: Events of the log that belong to no job, counted by ``--status``: associations rejected
#: (AE title, association limit, TLS) or aborted (by the peer, or by a timeout), and
#: instances refused (UIDs that are not UIDs, a full spool, a spool write that failed).
PEER_EVENTS = ("rejected", "aborted", "refused")


def peer_counts(log_path: str | Path) -> Counter:
    """How many of each :data:`PEER_EVENTS` the JSON-lines log at ``log_path`` holds."""
    path = Path(log_path)
    if not path.is_file():
        return Counter()
    return Counter(e["event"] for e in read_journal(path) if e.get("event") in PEER_EVENTS)


def status_lines(jobs: Iterable[Job], peers: Counter | None = None) -> list[str]:
    """What ``medseg serve CONFIG --status`` prints: the count per state, the counts of
    ``peers`` (:func:`peer_counts`), then one line per job that is not done (failed ones
    with their reason)."""
    jobs = sorted(jobs, key=lambda j: j.updated)
    counts = Counter(j.state for j in jobs)
    peers = peers or Counter()
    lines = ["  ".join(f"{state} {counts.get(state, 0)}" for state in STATES),
             f"associations rejected {peers['rejected']}  aborted {peers['aborted']}  "
             f"instances refused {peers['refused']}"]
    for job in jobs:
        if job.state != DONE:
            what = job.header.get("series_description") or job.header.get("modality") or ""
            line = f"{job.state:9s} {job.series_uid}  {what}".rstrip()
            if job.reason:
                line += f"  ({job.reason})"
            lines.append(line)
    return lines
