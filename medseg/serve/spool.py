"""The spool: the node's only truth, on disk.

::

    SPOOL/series/<SeriesInstanceUID>/job.json                 the job (medseg.serve.jobs.Job)
    SPOOL/series/<SeriesInstanceUID>/instances/<SOPInstanceUID>.dcm
    SPOOL/series/<SeriesInstanceUID>/result/<SOPInstanceUID>.dcm

Every file is written through :mod:`medseg.io.atomic` with ``durable=True`` (temporary
file, fsync, rename, fsync of the folder), so an instance is on the disk before its
C-STORE is acknowledged (as Orthanc and dcm4che do) and a kill leaves either the old
file or the new one, and at most a torn temporary file beside it, which the next node
on the folder removes before it starts (:meth:`Spool.remove_torn_writes`). UIDs arrive from the network: :func:`check_uid` holds them to the
DICOM UID grammar (PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters)
before they name a folder or a file, so ``../`` or ``/`` can never reach a path.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from pathlib import Path

from medseg.errors import DataError
from medseg.io.atomic import atomic_write_bytes, atomic_write_text
from medseg.serve.jobs import Job

__all__ = ["SpoolFullError", "Spool", "check_uid", "UID_PATTERN"]

#: PS3.5 9.1: components of digits without leading zeros (except "0"), separated by dots.
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class SpoolFullError(DataError):
    """An instance would take the spool over ``max_spool_gb``."""


def check_uid(uid: object, what: str) -> str:
    """``uid`` if it is a valid DICOM UID (PS3.5 9.1, at most 64 characters).

    Raises
    ------
    DataError
        naming ``what`` (e.g. "SeriesInstanceUID") and the value that arrived.

    >>> check_uid("1.2.840.10008.5.1.4.1.1.2", "SOPClassUID")
    '1.2.840.10008.5.1.4.1.1.2'
    """
    text = str(uid) if uid is not None else ""
    if not (0 < len(text) <= 64 and UID_PATTERN.fullmatch(text)):
        raise DataError(f"{what} {text[:80]!r} is not a DICOM UID (digits and dots, at most "
                        "64 characters)")
    return text


class Spool:
    """The series, jobs and results of one node under ``root``, and the bytes they take.

    Parameters
    ----------
    root : the spool folder (created).
    max_bytes : instances that would take the spool's size over this are refused
        (:class:`SpoolFullError`).
    """

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.series_root = self.root / "series"
        self.series_root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in self.series_root.rglob("*.dcm"))

    # -- paths ---------------------------------------------------------------------------------
    def folder(self, series_uid: str) -> Path:
        return self.series_root / check_uid(series_uid, "SeriesInstanceUID")

    def instances(self, series_uid: str) -> Path:
        return self.folder(series_uid) / "instances"

    def results(self, series_uid: str) -> Path:
        return self.folder(series_uid) / "result"

    @property
    def used_bytes(self) -> int:
        """Bytes of DICOM files in the spool now."""
        return self._used

    def remove_torn_writes(self) -> int:
        """Remove the temporary files that writes interrupted by a kill left in the spool
        (:func:`medseg.io.atomic.atomic_path` names them ``.NAME.RANDOM.tmpSUFFIX``); returns
        how many. Only while nothing writes here: a node calls it before it listens (never
        ``--status``, which may run beside a node)."""
        torn = [p for p in self.series_root.rglob(".*.tmp*") if p.is_file()]
        for path in torn:
            with contextlib.suppress(OSError):
                size = path.stat().st_size if path.suffix == ".dcm" else 0
                path.unlink()
                with self._lock:
                    self._used = max(0, self._used - size)
        return len(torn)

    # -- instances -----------------------------------------------------------------------------
    def store_instance(self, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one received instance (a DICOM file's bytes) durably; return its path.

        An instance received again (the same SOP Instance UID) replaces the earlier copy.

        Raises
        ------
        DataError : a UID that is not a DICOM UID.
        SpoolFullError : the spool would grow over ``max_bytes``.
        """
        path = self.instances(series_uid) / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
        old = path.stat().st_size if path.exists() else 0
        with self._lock:
            if self._used - old + len(data) > self.max_bytes:
                raise SpoolFullError(
                    f"spool over max_spool_gb ({self.max_bytes / 1e9:g} GB, "
                    f"{self._used / 1e9:.3f} GB used): instance refused", self.root)
            self._used += len(data) - old
        try:
            atomic_write_bytes(path, data, durable=True)
        except BaseException:
            with self._lock:
                self._used -= len(data) - old
            raise
        return path

    def instance_files(self, series_uid: str) -> list[Path]:
        folder = self.instances(series_uid)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))

    def discard(self, series_uid: str) -> None:
        """Remove a series' instances and result (its job record stays)."""
        for folder in (self.instances(series_uid), self.results(series_uid)):
            self._remove_tree(folder)

    def discard_result(self, series_uid: str) -> None:
        self._remove_tree(self.results(series_uid))

    def _remove_tree(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        freed = sum(p.stat().st_size for p in folder.glob("*.dcm"))
        shutil.rmtree(folder, ignore_errors=True)
        with self._lock:
            self._used = max(0, self._used - freed)

    def account(self, path: Path) -> None:
        """Count a file written into the spool by someone else (a result)."""
        with contextlib.suppress(OSError), self._lock:
            self._used += path.stat().st_size

    # -- jobs ----------------------------------------------------------------------------------
    def save(self, job: Job) -> None:
        """Write ``job.json`` durably."""
        atomic_write_text(self.folder(job.series_uid) / "job.json", job.to_json(), durable=True)

    def load(self, series_uid: str) -> Job | None:
        path = self.folder(series_uid) / "job.json"
        return Job.from_json(path.read_text(encoding="utf-8")) if path.is_file() else None

    def jobs(self) -> list[Job]:
        """Every job in the spool (folders whose name is not a UID are left alone)."""
        jobs = []
        for folder in sorted(self.series_root.iterdir()):
            if UID_PATTERN.fullmatch(folder.name) and (folder / "job.json").is_file():
                jobs.append(Job.from_json((folder / "job.json").read_text(encoding="utf-8")))
        return jobs
