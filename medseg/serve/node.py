"""The DICOM node: receive series into the spool, segment each complete one, send the result.

Three kinds of threads share the spool:

* pynetdicom's association threads (:mod:`medseg.serve.receive`) write each instance
  durably and acknowledge it; they never wait for the model;
* the *monitor* (:meth:`Node._monitor`) turns series that have been silent for
  ``series_timeout_s`` into queued jobs, hands queued and due-to-send jobs to the bounded
  queue (the rest wait in the spool), and removes finished series after ``retention_h``;
* one *worker* (:meth:`Node._work`) runs a job: route, predict, write the result into the
  spool, send it, done. Any error ends the job as failed with one line; the node goes on.

What a hostile or broken modality sends is held at the door (:meth:`Node._on_store`):
UIDs outside the UID grammar, or an Affected SOP Instance UID that is not the dataset's,
are refused (C000) before they name a file; native Pixel Data of the wrong length is
noted against its instance and fails the series (ITK would read it as air); an
association aborted in the middle of an instance (:meth:`Node._on_ended`) leaves its
series incomplete, and it fails when it falls silent unless more of it arrives; a
finished series received again with fewer instances than before is not segmented (its
result would replace the complete one). Each is one line in the log.

A node started on a spool that a killed node left behind continues its jobs
(:meth:`Node._recover`): series still receiving wait for silence again (the PACS may be
resending them), interrupted runs run again, unsent results are sent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from medseg.errors import DataError, MedsegError
from medseg.io.dicom.files import non_image_kind, pixel_data_problem
from medseg.serve.config import ServeConfig
from medseg.serve.jobs import (
    DONE,
    FAILED,
    FINISHED,
    QUEUED,
    RECEIVING,
    RUNNING,
    SENDING,
    Job,
    Journal,
)
from medseg.serve.receive import STATUS, start_scp
from medseg.serve.spool import Spool, SpoolFullError, check_uid

__all__ = ["Node"]

log = logging.getLogger(__name__)


class Node:
    """A ``medseg serve`` node for ``cfg`` (:class:`~medseg.serve.config.ServeConfig`).

    ``start()`` loads the routes' models, recovers the spool and starts listening;
    ``address`` is then the (host, port) bound; ``stop()`` ends everything.
    """

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.spool = Spool(cfg.spool_path, cfg.max_spool_bytes)
        self.journal = Journal(cfg.log_path)
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._last_seen: dict[str, float] = {}
        self._refusing: dict[str, float] = {}
        self._arrived: dict[int, set[str]] = {}  # id(association) -> series it stored
        self._queued: set[str] = set()
        self._queue: queue.Queue[str] = queue.Queue(maxsize=cfg.queue_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self._routes = None
        self._runtime = None
        self._access = None  # the DICOMweb destination's credentials, read at start

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        from medseg.runtime import Runtime
        from medseg.serve.process import load_routes

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self._access = (self.cfg.destination.access(self.cfg.source)
                        if self.cfg.destination.is_dicomweb else None)
        self._runtime = Runtime.resolve(self.cfg.device)
        self._routes = load_routes(self.cfg, self._runtime)
        self._recover()
        self._server = start_scp(self.cfg, self._on_store, self._on_rejected, self._on_ended)
        for target, name in ((self._monitor, "medseg-monitor"), (self._work, "medseg-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        host, port = self.address
        self.journal.write("listening", host=host, port=port, ae_title=self.cfg.ae_title)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the Storage SCP is bound to."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout=30)
        self.journal.write("stopped")
        self.journal.close()

    def _recover(self) -> None:
        """Take up the jobs a previous node left in the spool (and remove the temporary files
        of its interrupted writes)."""
        torn = self.spool.remove_torn_writes()
        if torn:
            self.journal.write("torn_writes_removed", files=torn)
        now = time.time()
        for job in self.spool.jobs():
            if job.state == RUNNING:
                job.state = QUEUED
                self._save(job, "requeued")
            elif job.state == SENDING:
                job.next_try = now
            self._jobs[job.series_uid] = job
            if job.state == RECEIVING:
                self._last_seen[job.series_uid] = now  # the PACS may be sending it again
        pending = sum(j.state not in FINISHED for j in self._jobs.values())
        if pending:
            self.journal.write("recovered", jobs=pending)

    # -- receiving ----------------------------------------------------------------------------
    def _on_rejected(self, calling_aet: str, address: str, reason: str) -> None:
        self.journal.write("rejected", calling_aet=calling_aet, address=address, reason=reason)

    def _on_store(self, event) -> int:
        """A C-STORE: the instance on disk, then the status (pynetdicom sends it)."""
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds, series_uid, sop_uid = _checked_instance(event)
            data = event.encoded_dataset()
        except (MedsegError, ValueError, TypeError, AttributeError, KeyError) as exc:
            self.journal.write("refused", calling_aet=calling,
                               reason=" ".join(str(exc).split()))
            return STATUS["cannot_understand"]
        with self._lock:
            if self._refusing.get(series_uid, 0.0) > time.time():
                self._refusing[series_uid] = time.time() + self.cfg.series_timeout_s
                return STATUS["out_of_resources"]
            job = self._begin(series_uid, instance_header(ds, calling))
        try:
            self.spool.store_instance(series_uid, sop_uid, data)
        except SpoolFullError as exc:
            self._refuse_series(job, exc)
            return STATUS["out_of_resources"]
        except OSError as exc:
            self.journal.write("refused", series=series_uid, reason=f"spool write failed: {exc}")
            return STATUS["processing_failure"]
        with self._lock:
            self._last_seen[series_uid] = time.time()
            self._note_instance(job, sop_uid,
                                pixel_data_problem(ds, event.context.transfer_syntax))
            self._arrived.setdefault(id(event.assoc), set()).add(series_uid)
        return STATUS["success"]

    def _note_instance(self, job: Job, sop_uid: str, defect: str | None) -> None:
        """Record what a stored instance says about its series: a defect of its Pixel Data
        (or its absence, when the instance came again whole), and that the series is no
        longer known to be cut short. Saves the job only when that changes. Called with
        the lock held."""
        changed = bool(job.interrupted) or job.defects.get(sop_uid) != defect
        job.interrupted = ""
        if defect is None:
            job.defects.pop(sop_uid, None)
        else:
            job.defects[sop_uid] = defect
        if changed:
            self._save(job, "instance", sop_instance_uid=sop_uid, defect=defect)

    def _on_ended(self, assoc, aborted: bool, mid_instance: bool) -> None:
        """An association ended. Aborted in the middle of an instance (by the peer, or by
        ``network_timeout_s``), the series it was sending lack that instance: each is
        marked interrupted, and fails when it falls silent unless more of it arrives."""
        requestor = assoc.requestor
        calling = str(requestor.ae_title).strip()
        with self._lock:
            series = sorted(self._arrived.pop(id(assoc), set()))
            if not aborted or getattr(assoc, "is_rejected", False):  # rejected: logged so
                return
            self.journal.write("aborted", calling_aet=calling, mid_instance=mid_instance,
                               address=f"{requestor.address}:{requestor.port}", series=series)
            if not mid_instance:
                return
            for uid in series:
                job = self._jobs.get(uid)
                if job is not None and job.state == RECEIVING:
                    job.interrupted = (f"the association from {calling} was aborted in the "
                                       "middle of an instance of the series")
                    self._save(job, "interrupted", calling_aet=calling)

    def _begin(self, series_uid: str, header: dict[str, str]) -> Job:
        """The job an instance of ``series_uid`` belongs to (created, or restarted when the
        series arrives again after it finished). Called with the lock held."""
        job = self._jobs.get(series_uid)
        if job is None or job.state in FINISHED:
            run, previous = (1, 0) if job is None else (
                job.run + 1, max(job.instances, job.previous_instances))
            if job is not None:
                self.spool.discard(series_uid)
            job = Job(series_uid, header=header, run=run, previous_instances=previous)
            self._jobs[series_uid] = job
            self._save(job, "receiving", calling_aet=header.get("calling_aet"),
                       modality=header.get("modality"))
        elif job.state == QUEUED:
            job.state = RECEIVING  # more of the series: wait for silence again
            self._save(job, "receiving", more=True)
        if job.header.get("non_image") and not header.get("non_image"):
            job.header = header  # route by an image of the series, not by a report in it
            self._save(job, "header", modality=header.get("modality"))
        elif job.state in (RUNNING, SENDING) and not job.late:
            job.late = True
            self._save(job, "late_instance")
        self._last_seen[series_uid] = time.time()
        return job

    def _refuse_series(self, job: Job, exc: SpoolFullError) -> None:
        """The spool is full: the series cannot be complete, so it fails and its instances
        go; its other instances are refused until it has been silent for series_timeout_s
        (the PACS can send it again later)."""
        with self._lock:
            self._refusing[job.series_uid] = time.time() + self.cfg.series_timeout_s
            self.spool.discard(job.series_uid)
            self._fail(job, exc.message)

    # -- monitor -----------------------------------------------------------------------------
    def _monitor(self) -> None:
        tick = min(1.0, self.cfg.series_timeout_s / 4)
        while not self._stop.wait(tick):
            try:
                self._close_silent_series()
                self._fill_queue()
                self._purge_old()
            except Exception:  # noqa: BLE001 - the monitor must outlive any one job's files
                log.exception("monitor: unexpected error (the node goes on)")

    def _close_silent_series(self) -> None:
        now = time.time()
        with self._lock:
            for uid, job in self._jobs.items():
                if job.state == RECEIVING and now - self._last_seen.get(uid, now) \
                        >= self.cfg.series_timeout_s:
                    job.instances = len(self.spool.instance_files(uid))
                    incomplete = self._incomplete(job)
                    if incomplete:
                        self._fail(job, incomplete)
                    else:
                        job.state = QUEUED
                        self._save(job, "queued", instances=job.instances)

    def _incomplete(self, job: Job) -> str | None:
        """Why the silent series of ``job`` is not to be segmented (None: it is)."""
        if job.instances == 0:
            return "no instance of the series reached the spool"
        if job.interrupted:
            return (f"{job.interrupted} ({job.instances} instances stored): not segmented, a "
                    "partial series; send the series again")
        if job.instances < job.previous_instances:
            return (f"received again with {job.instances} instance(s), fewer than the "
                    f"{job.previous_instances} of its earlier run: not segmented, its result "
                    "would replace the complete one; send the whole series")
        if job.defects:
            sop, defect = next(iter(sorted(job.defects.items())))
            more = f" (and {len(job.defects) - 1} more)" if len(job.defects) > 1 else ""
            return f"instance {sop}: {defect}{more}"
        return None

    def _fill_queue(self) -> None:
        now = time.time()
        with self._lock:
            ready = [j for j in self._jobs.values() if j.series_uid not in self._queued and (
                j.state == QUEUED or (j.state == SENDING and j.next_try <= now))]
            for job in sorted(ready, key=lambda j: j.updated):
                try:
                    self._queue.put_nowait(job.series_uid)
                except queue.Full:
                    return
                self._queued.add(job.series_uid)

    def _purge_old(self) -> None:
        cutoff = time.time() - self.cfg.retention_h * 3600
        with self._lock:
            old = [j for j in self._jobs.values()
                   if j.state in FINISHED and not j.purged and j.updated < cutoff]
            for job in old:
                self.spool.discard(job.series_uid)
                job.purged = True
                self.spool.save(job)
                self.journal.write("purged", series=job.series_uid)

    # -- worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                uid = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._run(uid)
            except Exception as exc:  # noqa: BLE001 - one job's failure never stops the node
                log.exception("job %s: unexpected error", uid)
                with self._lock:
                    self._fail(self._jobs[uid], f"internal error {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._queued.discard(uid)

    def _run(self, uid: str) -> None:
        with self._lock:
            job = self._jobs[uid]
            if job.state == QUEUED:
                job.state, job.attempts, job.result, job.route = RUNNING, 0, None, None
                self._save(job, "running")
            elif job.state != SENDING:
                return  # more instances arrived since it was queued
        if job.state == RUNNING and not self._predict(job):
            return
        self._send(job)

    def _predict(self, job: Job) -> bool:
        """Route and predict ``job``; True when its result is in the spool (state sending)."""
        from medseg.serve.process import SERIES_ERRORS, match_route, segment_series

        route = match_route(self.cfg.routes, job.header)
        if route is None:
            h = job.header
            with self._lock:
                self._fail(job, f"no route matches modality {h.get('modality')!r}, series "
                                f"description {h.get('series_description')!r}, body part "
                                f"{h.get('body_part')!r}")
            return False
        started = time.time()
        try:
            self.spool.discard_result(job.series_uid)
            path, used = segment_series(self.spool.instances(job.series_uid), job.series_uid,
                                  self._routes[route], self.spool.results(job.series_uid),
                                  self._runtime)
        except SERIES_ERRORS as exc:
            with self._lock:
                self._fail(job, " ".join(str(exc).split()))
            return False
        self.spool.account(path)
        with self._lock:
            if self._again_if_late(job):
                return False
            job.state, job.route, job.result = SENDING, route, path.name
            job.next_try = time.time()
            self._save(job, "predicted", route=route, seconds=round(time.time() - started, 3),
                       instances_used=used, left_out=max(0, job.instances - used))
        return True

    def _send(self, job: Job) -> None:
        from medseg.serve.send import SendError, send_result

        path = self.spool.results(job.series_uid) / str(job.result)
        try:
            send_result(path, self.cfg.destination, self.cfg.ae_title, timeouts_s=(
                self.cfg.acse_timeout_s, self.cfg.dimse_timeout_s, self.cfg.network_timeout_s),
                access=self._access)
        except SendError as exc:
            with self._lock:
                job.attempts += 1
                if job.attempts >= self.cfg.send_attempts:
                    self._fail(job, f"not sent after {job.attempts} attempts: {exc.message}")
                else:
                    job.next_try = time.time() + self.cfg.retry_s
                    self._save(job, "send_failed", attempt=job.attempts, reason=exc.message)
            return
        with self._lock:
            job.attempts += 1
            if self._again_if_late(job):
                return
            job.state = DONE
            self._save(job, "done", sop_instance_uid=path.stem, attempts=job.attempts)

    def _again_if_late(self, job: Job) -> bool:
        """When instances arrived while ``job`` ran, receive its series again (its result
        replaces this one). Called with the lock held."""
        if not job.late:
            return False
        job.late, job.state = False, RECEIVING
        self._last_seen[job.series_uid] = time.time()
        self._save(job, "receiving", more=True)
        return True

    # -- state -------------------------------------------------------------------------------
    def _fail(self, job: Job, reason: str) -> None:
        job.state, job.reason, job.late = FAILED, reason, False
        self._save(job, "failed", reason=reason)

    def _save(self, job: Job, event: str, **fields) -> None:
        job.updated = time.time()
        self.spool.save(job)
        self.journal.write(event, series=job.series_uid, **fields)

    def counts(self) -> dict[str, int]:
        """Jobs per state, as the node holds them now."""
        with self._lock:
            out: dict[str, int] = {}
            for job in self._jobs.values():
                out[job.state] = out.get(job.state, 0) + 1
            return out


def _checked_instance(event):
    """(dataset, Series Instance UID, SOP Instance UID) of a C-STORE request, the UIDs held
    to the UID grammar before they name anything.

    Raises
    ------
    DataError : a UID that is not a UID, or a dataset whose SOP Instance UID is not the
        request's Affected SOP Instance UID (PS3.4 requires them equal).
    """
    ds = event.dataset
    series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
    sop_uid = check_uid(event.request.AffectedSOPInstanceUID, "Affected SOP Instance UID")
    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        raise DataError(f"the dataset's SOPInstanceUID {str(ds.get('SOPInstanceUID', ''))[:80]!r}"
                        f" is not the C-STORE's Affected SOP Instance UID {sop_uid!r}")
    return ds, series_uid, sop_uid


def instance_header(ds, calling_aet: str) -> dict[str, str]:
    """The job header one instance gives (:func:`medseg.serve.process.series_header`), with
    the calling AE title and, for a non-image object, what it is (``non_image``)."""
    from medseg.serve.process import series_header

    return {**series_header(ds), "calling_aet": calling_aet,
            "non_image": non_image_kind(ds) or ""}


def spool_jobs(cfg: ServeConfig) -> list[Job]:
    """The jobs in ``cfg``'s spool (what ``--status`` reports; no node needs to run)."""
    if not Path(cfg.spool_path, "series").is_dir():
        return []
    return Spool(cfg.spool_path, cfg.max_spool_bytes).jobs()
