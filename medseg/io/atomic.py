"""Atomic writes: write to a temporary file in the destination folder, then rename.

A crash, a full disk or an exception while writing never leaves a partial file
under the final name, and an existing file stays intact until the new one is
complete. The destination folder is created when missing (:func:`ensure_parent`).
Used by every writer in medseg (images, CSV, JSON, checkpoints, HTML).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import ImageWriteError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "check_parent",
           "ensure_parent", "check_writable_dir"]


def ensure_parent(path: str | os.PathLike) -> Path:
    """Create the folder that will hold ``path`` (with its parents) and return it.

    Every writer calls this, so each command writes into a new folder as
    readily as into an existing one.

    Raises
    ------
    ImageWriteError
        Naming ``path`` (the file being written): the folder cannot be created
        (e.g. one of its parents is a file) or is not writable.
    """
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageWriteError(f"cannot create the output folder {folder}: "
                              f"{exc.strerror or exc}", path) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageWriteError(f"output folder {folder} is not writable", path)
    return folder


#: The former name of :func:`ensure_parent` (io.sitk and io.write_volume still use it).
check_writable_dir = ensure_parent


def check_parent(path: str | os.PathLike) -> None:
    """Fail early, creating nothing, when :func:`ensure_parent` could not give ``path`` a folder.

    For commands that check their output before long work: the folder itself is only
    created when the file is written, so a run that fails in between leaves nothing.

    Raises
    ------
    ImageWriteError
        Naming ``path``: a parent is a file, or the nearest existing folder is not writable.
    """
    folder = Path(path).resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ImageWriteError(f"cannot create the output folder {folder}: {existing} is a file",
                              path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ImageWriteError(f"output folder {existing} is not writable", path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, *,
                durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps ``suffix`` (default: the full suffix of ``path``,
    e.g. ``.nii.gz``) so that libraries choosing a format by extension still
    work. On any exception the temporary file is removed and the exception
    propagates; ``path`` is untouched. ``durable=True`` also flushes the file and then
    the folder entry to the disk (``fsync``) before returning, so that the file survives
    a power cut or a ``kill -9`` of the machine's writer once this returns (what a DICOM
    node must do before it acknowledges an instance).
    """
    target = Path(path)
    folder = ensure_parent(target)
    if suffix is None:
        suffix = "".join(target.suffixes) if target.suffixes else ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _set_default_mode(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
        if durable:
            _fsync(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _set_default_mode(path: Path) -> None:
    """Give ``path`` the mode a newly created file gets (0o666 minus the umask).

    ``mkstemp`` creates files readable by their owner only; an output file
    should be readable like any other file the user creates.
    """
    umask = os.umask(0o022)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: fsynced, see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", *,
                      durable: bool = False) -> None:
    """Write ``text`` to ``path`` atomically (``durable``: fsynced, see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode(encoding), durable=durable)
