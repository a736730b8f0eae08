"""Exported networks kept on disk between processes, so that ``medseg predict --backend
onnxruntime|openvino`` exports and compiles a network once, not in every run.

Every process that runs a network in an engine would otherwise trace it to ONNX (about a
second for a small U-Net) and compile it again (OpenVINO: another half second or more),
which on a small image costs more than the engine saves (``benchmarks/bench_export.py``).
The cache holds, per network and engine, one **entry**::

    <root>/engines/<key>/entry.json        what the entry holds: each file's size and SHA-256
    <root>/engines/<key>/network.onnx      ONNX Runtime: the ONNX export (opset OPSET)
    <root>/engines/<key>/network.xml|.bin  OpenVINO: its IR, reshaped to one window
                                           (1, C, x, y, z), float32 weights
    <root>/engines/<key>/compiled/         OpenVINO's own compiled-blob cache (``CACHE_DIR``)

``<key>`` is the SHA-256 of everything the files depend on (:func:`entry_key`): the
network's weights and buffers (names, dtypes, shapes, bytes), its structure (``repr``) and
the source files of its module classes, the engine and its version, torch's and medseg's
versions, the input channels, the window (voxels) and the ONNX opset. The compile
precision (OpenVINO fp32 / bf16) is not in it: OpenVINO keys its compiled blobs on the
compile configuration itself, so both precisions share the entry's network files.
ONNX Runtime gets no compiled cache: its session is built from the ONNX file in a few tens
of milliseconds (the bench's networks), and its saved optimised graphs are tied to the CPU
that made them.

``<root>`` is :func:`medseg.inference.engines.cache_root`: ``$MEDSEG_CACHE`` when set
(``MEDSEG_CACHE=off`` turns the cache off), else ``$XDG_CACHE_HOME/medseg``, else
``~/.cache/medseg``. Removing ``<root>/engines`` (or any entry in it) clears the cache; it
is rebuilt on the next run.

Safety: an entry is built in a temporary folder beside it and renamed into place when
complete, so a killed process leaves at most a ``.tmp-*`` folder, never an entry that is
later trusted (the next build removes such folders once an hour old, :func:`sweep`); when two processes build the same entry, the first rename wins and the
other uses it. Before use every file of an entry is checked against ``entry.json`` (size
and SHA-256); an entry that fails is removed and built again (logged), never used.
OpenVINO checks its own blobs (a blob it cannot import is compiled again). A cache folder
that cannot be written leaves the run uncached (logged), never failed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from medseg.inference.engines import cache_root

__all__ = ["ENTRY", "NETWORK_FILES", "STALE_S", "cached_network", "entry_key", "sweep",
           "verify_entry"]

log = logging.getLogger(__name__)

#: A ``.tmp-*`` or ``.old-*`` folder unchanged for this many seconds is a killed run's
#: leftover (an export takes seconds to minutes), removed by :func:`sweep`.
STALE_S = 3600.0

#: The file of an entry that lists its other files.
ENTRY = "entry.json"
#: The network file of an entry per engine (OpenVINO's ``.bin`` sits beside its ``.xml``).
NETWORK_FILES = {"onnxruntime": "network.onnx", "openvino": "network.xml"}
#: Bumped when the layout of an entry changes: old entries are then simply not found.
LAYOUT = 1

#: Writes the network file of an entry: (network, path of NETWORK_FILES[engine]) -> None.
Writer = Callable[[nn.Module, Path], None]


def entry_key(network: nn.Module, engine: str, in_channels: int, roi_size: Sequence[int],
              opset: int) -> str:
    """The SHA-256 (hex) naming ``network``'s entry for ``engine`` (module docstring)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({
        "layout": LAYOUT, "engine": engine, "engine_version": _version(engine),
        "torch": torch.__version__, "medseg": _version("medseg"), "opset": int(opset),
        "in_channels": int(in_channels), "roi_size": [int(r) for r in roi_size],
        "structure": repr(network), "sources": _source_digest(network),
    }, sort_keys=True).encode())
    for name, tensor in [*network.state_dict().items()]:
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _source_digest(network: nn.Module) -> str:
    """SHA-256 of the source files that define the network's module classes (a change to
    a forward changes the export even when the weights do not)."""
    files = set()
    for module in network.modules():
        try:
            files.add(inspect.getsourcefile(type(module)))
        except TypeError:  # a class without a source file: its repr still counts
            continue
    digest = hashlib.sha256()
    for name in sorted(f for f in files if f):
        digest.update(name.encode())
        digest.update(Path(name).read_bytes())
    return digest.hexdigest()


def cached_network(network: nn.Module, engine: str, in_channels: int,
                   roi_size: Sequence[int], opset: int, write: Writer,
                   root: Path | None = None) -> Path | None:
    """The network file of ``network``'s entry for ``engine``, built by ``write`` when the
    entry is missing or fails :func:`verify_entry`; None when there is no usable cache
    (turned off, or its folder cannot be written: the caller exports in memory).

    ``root`` defaults to :func:`~medseg.inference.engines.cache_root`.
    """
    root = cache_root() if root is None else root
    if root is None:
        return None
    folder = root / "engines" / entry_key(network, engine, in_channels, roi_size, opset)
    name = NETWORK_FILES[engine]
    if folder.is_dir():
        problem = verify_entry(folder)
        if problem is None:
            return folder / name
        log.warning("engine cache entry %s is damaged (%s): building it again", folder, problem)
        _remove(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        sweep(folder.parent)
        build = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name[:12]}-", dir=folder.parent))
    except OSError as exc:
        log.info("engine cache %s is not writable (%s): exporting in memory", root,
                 exc.strerror or exc)
        return None
    try:
        write(network, build / name)
        _write_entry(build)
        try:
            os.rename(build, folder)
        except OSError:  # another process put the same entry in place first: use it
            if verify_entry(folder) is not None:
                raise
            _remove(build)
    except BaseException:
        _remove(build)
        raise
    return folder / name


def sweep(engines: Path, older_than_s: float = STALE_S) -> list[Path]:
    """Remove the ``.tmp-*`` (a build a killed process left) and ``.old-*`` (a removal it
    left) folders in ``engines`` last changed more than ``older_than_s`` seconds ago; a
    younger one may be another process's build in progress. Returns what was removed."""
    now, removed = time.time(), []
    for path in engines.iterdir():
        try:
            stale = now - path.stat().st_mtime > older_than_s
        except OSError:
            continue
        if path.is_dir() and path.name.startswith((".tmp-", ".old-")) and stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("engine cache: removed %d folder(s) left by killed runs", len(removed))
    return removed


def verify_entry(folder: Path) -> str | None:
    """None when every file ``entry.json`` lists has its recorded size and SHA-256 (and
    ``entry.json`` lists a network file); else what is wrong, in words."""
    try:
        files = json.loads((folder / ENTRY).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{ENTRY} unreadable ({exc})"
    if not isinstance(files, dict) or not any(n in files for n in NETWORK_FILES.values()):
        return f"{ENTRY} lists no network"
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("size"):
            return f"{name} has {size} bytes, expected {expected.get('size')}"
        if _sha256(path) != expected.get("sha256"):
            return f"{name} does not match its SHA-256"
    return None


def _write_entry(folder: Path) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / ENTRY).write_text(json.dumps({"files": files}, indent=1) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove(folder: Path) -> None:
    """Remove ``folder``, first renamed aside so that no process sees it half deleted."""
    try:
        aside = Path(tempfile.mkdtemp(prefix=".old-", dir=folder.parent))
        os.replace(folder, aside / "entry")
    except OSError:
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)
