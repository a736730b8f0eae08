"""The node under test as a real process (`python -m medseg serve CONFIG`), series copies
with their own UIDs, and the checks of a returned DICOM-SEG."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import yaml
from predict.predict_helpers import LABEL_NAMES
from pydicom.uid import generate_uid

from medseg.serve.jobs import read_journal

from .orthanc_server import AET, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE_AET = "MEDSEG"


class NodeProcess:
    """``medseg serve`` in a subprocess, with its config, spool and log under ``folder``."""

    def __init__(self, folder: Path, model: Path, orthanc_port: int | None, **overrides):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = overrides.pop("port", None) or free_port()
        destination = ({"ae_title": AET, "host": "127.0.0.1", "port": orthanc_port}
                       if orthanc_port else {"dicomweb": "http://127.0.0.1:9/dicom-web"})
        self.config = {
            "ae_title": NODE_AET,
            "host": "127.0.0.1",
            "port": self.port,
            "allowed_calling_aets": [AET, "TESTSCU"],
            "spool": "spool",
            "series_timeout_s": 2,
            "routes": [{"match": {"modality": "CT"}, "model": str(model), "format": "seg"}],
            "destination": destination,
            "max_spool_gb": 5,
            "retry_s": 1,
        }
        self.config.update(overrides)
        self.config_path = folder / "serve.yaml"
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self) -> str:
        """Start the node; return its ``listening on ...`` line once it prints it."""
        self.write_config()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.lines = []
        stderr = open(self.folder / "stderr.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "medseg", "serve", str(self.config_path)], env=env,
            stdout=subprocess.PIPE, stderr=stderr, text=True)
        stderr.close()
        threading.Thread(target=self._read, daemon=True).start()
        return wait_until(self._listening, 180, "the node's 'listening on' line")

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _listening(self):
        if self.process.poll() is not None and not self.lines:
            raise RuntimeError("medseg serve exited: "
                               + (self.folder / "stderr.log").read_text()[-3000:])
        return next((line for line in self.lines if line.startswith("listening on")), None)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self) -> list[dict]:
        path = self.folder / "spool" / "serve.jsonl"
        return read_journal(path) if path.is_file() else []

    def done(self, series_uid: str) -> list[dict]:
        return [e for e in self.events() if e["event"] == "done" and e["series"] == series_uid]

    def finished(self, series_uid: str) -> dict | None:
        """The last 'done' or 'failed' event of the series, if any."""
        ends = [e for e in self.events()
                if e["event"] in ("done", "failed") and e.get("series") == series_uid]
        return ends[-1] if ends else None

    def status(self) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-m", "medseg", "serve", str(self.config_path),
                              "--status"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout


WAIT_S = 600  # guards against a hang, on 2 shared cores


def start_node(nodes, tmp_path, model, orthanc, name="node", **overrides) -> NodeProcess:
    """Start a node whose destination is ``orthanc`` and register it there as "medseg"."""
    node = NodeProcess(tmp_path / name, model, orthanc.dicom_port, **overrides)
    nodes.append(node)
    line = node.start()
    assert line == f"listening on 127.0.0.1:{node.port} as {NODE_AET}"
    orthanc.add_modality("medseg", NODE_AET, node.port)
    return node


def push(port: int, datasets: list[pydicom.Dataset], aet: str = "TESTSCU",
         tls_args=None) -> list[int]:
    """C-STORE ``datasets`` to the node in one association as the modality ``aet`` (as a
    modality would: pynetdicom's StoreSCU); their statuses. ``tls_args``: pynetdicom's
    ``(ssl_context, server_hostname)`` for DICOM over TLS."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.requested_contexts = list({(c.abstract_syntax, tuple(c.transfer_syntax)): c
                                  for c in ae.requested_contexts}.values())
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET, tls_args=tls_args)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def series_uid_of(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def segs_by_series(orthanc) -> dict[str, list[pydicom.Dataset]]:
    """Every SEG instance in Orthanc (each downloaded once), by the series it references."""
    out: dict[str, list[pydicom.Dataset]] = {}
    for instance in orthanc.seg_instances():
        seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))
        out.setdefault(str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID), []).append(seg)
    return out


def segs_for(orthanc, series_uid: str) -> list[pydicom.Dataset]:
    """Every SEG instance in Orthanc that references ``series_uid``."""
    return segs_by_series(orthanc).get(series_uid, [])


def wait_done(node: NodeProcess, series_uid: str, count: int = 1) -> None:
    def check():
        failed = [e for e in node.events()
                  if e["event"] == "failed" and e.get("series") == series_uid]
        assert not failed, failed
        return len(node.done(series_uid)) >= count
    wait_until(check, WAIT_S, f"job {series_uid} done")


def copy_series(files: list[Path], dest: Path, key: str, keep=None) -> tuple[list[Path], str]:
    """Copy a series under new Study / Series / SOP Instance UIDs derived from ``key``
    (and its SOP Class UID in the dataset, which the shared anonymised files leave empty)
    (files ``keep(index) -> bool`` only); returns the files and the new Series UID."""
    dest.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=[key, "study"])
    series = generate_uid(entropy_srcs=[key, "series"])
    out = []
    for i, path in enumerate(sorted(files)):
        if keep is not None and not keep(i):
            continue
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # empty in the shared files
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[key, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = dest / f"{i:03d}.dcm"
        ds.save_as(target)
        out.append(target)
    return out, series


def slice_hu(ds: pydicom.Dataset) -> np.ndarray:
    """A CT slice's (rows, columns) values in HU, from its pixels and rescale (pydicom)."""
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def seg_frames_by_position(seg) -> dict[tuple, np.ndarray]:
    """(rounded LPS position) -> (rows, cols) label-value frame of a BINARY SEG written by
    medseg (segment n holds the label its Segment Label names)."""
    values = {name: value for value, name in LABEL_NAMES.items()}
    numbers = {int(s.SegmentNumber): values[str(s.SegmentLabel)] for s in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out: dict[tuple, np.ndarray] = {}
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = tuple(np.round(np.array(group.PlanePositionSequence[0].ImagePositionPatient,
                                      float), 2))
        plane = out.setdefault(pos, np.zeros(frame.shape, np.uint8))
        plane[frame.astype(bool)] = numbers[number]
    return out


def dciodvfy_errors(path: Path) -> list[str] | None:
    """The "Error" lines of dicom3tools' dciodvfy for ``path``; None where it is absent."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def associate(port: int, datasets: list[pydicom.Dataset] = (), aet: str = "TESTSCU"):
    """An established association with the node as the modality ``aet``, proposing the
    SOP classes and transfer syntaxes of ``datasets`` (Verification when none)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    if not datasets:
        ae.add_requested_context(Verification)
    ae.requested_contexts = list({(c.abstract_syntax, tuple(c.transfer_syntax)): c
                                  for c in ae.requested_contexts}.values())
    return ae.associate("127.0.0.1", port, ae_title=NODE_AET)


def store_raw(assoc, ds: pydicom.Dataset, affected_uid: str | None = None,
              fragments: int | None = None) -> int | None:
    """A C-STORE of ``ds`` as a hostile modality sends it, below pynetdicom's checks: its
    Affected SOP Instance UID ``affected_uid`` (default: the dataset's), and with
    ``fragments`` only the first that many P-DATA PDUs of the message (the rest never
    sent). The status, or None when the message was cut short."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    syntax = ds.file_meta.TransferSyntaxUID
    context = next(c for c in assoc.accepted_contexts
                   if c.abstract_syntax == ds.SOPClassUID and c.transfer_syntax[0] == syntax)
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = affected_uid or ds.SOPInstanceUID
    req.DataSet = io.BytesIO(encode(ds, syntax.is_implicit_VR, True))
    assoc._reactor_checkpoint.clear()  # as Association.send_c_store does: no reactor race
    while not assoc._is_paused:
        threading.Event().wait(0.0001)
    try:
        if fragments is None:
            assoc.dimse.send_msg(req, context.context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
            return int(rsp.Status) if rsp is not None else None
        message = C_STORE_RQ()
        message.primitive_to_message(req)
        for k, pdata in enumerate(message.encode_msg(context.context_id,
                                                     assoc.dimse.maximum_pdu_size)):
            if k == fragments:
                break
            assoc.dul.send_pdu(pdata)
        return None
    finally:
        assoc._reactor_checkpoint.set()


def non_image_object(sop_class: str, modality: str, study_uid: str, series_uid: str
                     ) -> pydicom.Dataset:
    """A minimal non-image object (a report, a presentation state ...: ``sop_class``) in
    the given study and series, as a modality may send one."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID = modality, "P1"
    return ds
