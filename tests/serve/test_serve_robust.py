"""`medseg serve` under load and under kills, against a real Orthanc: 20 series pushed at
once by 20 modalities' associations, ``kill -9`` at seeded random moments while it
receives, predicts and sends, and the retention purge of the spool.

What "exactly once" means is counted in Orthanc itself: the SEG instances that reference
each source series (a resend of the same deterministic SOP Instance UID replaces, so a
duplicate would be a second instance), and each SEG's referenced instances are its own
series' complete set (so no result was made from a part of a series or from another one)."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pydicom
from predict.predict_helpers import threshold_labels

from .conftest import FEW_SLICES
from .orthanc_server import wait_until
from .serve_helpers import (
    WAIT_S,
    copy_series,
    push,
    NODE_AET,
    seg_frames_by_position,
    segs_by_series,
    slice_hu,
    start_node,
    wait_done,
)

def _series_set(ct_files, tmp_path, count: int, tag: str):
    """``count`` copies of slices FEW_SLICES of the shared series, each under UIDs of its own
    derived from ``tag`` and its index: [(datasets, series_uid)]."""
    out = []
    for k in range(count):
        files, uid = copy_series(ct_files, tmp_path / f"{tag}{k}", f"{tag} {k}",
                                 keep=lambda i: i in FEW_SLICES)
        out.append(([pydicom.dcmread(f) for f in files], uid))
    return out


def _expected_frames(datasets) -> dict[tuple, np.ndarray]:
    """(rounded LPS position) -> the threshold rule on that slice's pixels (pydicom)."""
    out = {}
    for ds in datasets:
        pos = tuple(np.round(np.array(ds.ImagePositionPatient, float), 2))
        out[pos] = threshold_labels(slice_hu(ds))
    return out


def _check_each_came_back_once(orthanc, series) -> None:
    """One SEG per source series in Orthanc, referencing exactly that series' instances,
    with the threshold rule's labels on every slice; no other SEG."""
    expected = _expected_frames(series[0][0])  # every copy has the same pixels
    segs = segs_by_series(orthanc)
    assert {uid: len(segs.get(uid, [])) for _, uid in series} == {uid: 1 for _, uid in series}
    for datasets, uid in series:
        (seg,) = segs[uid]
        referenced = {r.ReferencedSOPInstanceUID
                      for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}, uid
        frames = seg_frames_by_position(seg)
        for pos, labels in expected.items():
            np.testing.assert_array_equal(frames.get(pos, np.zeros_like(labels)), labels)
    assert len(orthanc.seg_instances()) == len(series)


def test_twenty_series_pushed_at_once_each_come_back_once(orthanc, small_model, ct_files, nodes,
                                                          tmp_path):
    """20 associations open at the same time, one series each (4 slices); every series
    is acknowledged in full, and every one comes back exactly once."""
    node = start_node(nodes, tmp_path, small_model, orthanc)
    series = _series_set(ct_files, tmp_path, 20, "concurrent")
    statuses: dict[str, list[int]] = {}
    start = threading.Barrier(len(series))

    def modality(datasets, uid) -> None:
        start.wait()
        statuses[uid] = push(node.port, datasets, aet="TESTSCU")

    threads = [threading.Thread(target=modality, args=s) for s in series]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == {uid: [0x0000] * len(FEW_SLICES) for _, uid in series}
    for _, uid in series:
        wait_done(node, uid)
    _check_each_came_back_once(orthanc, series)
    assert node.status().splitlines()[0] == \
        "receiving 0  queued 0  running 0  sending 0  done 20  failed 0"


class Modality(threading.Thread):
    """A modality that sends ``series`` one after the other (one association each, a pause
    of ``gap_s`` between them) and, as a PACS does, sends an instance again until the node
    acknowledges it: a refused association or a C-STORE without status (the node died)
    means "wait and try again". ``acked`` counts acknowledged instances."""

    def __init__(self, port: int, series, gaps_s: list[float]) -> None:
        super().__init__(daemon=True)
        self.port, self.series, self.gaps_s = port, series, gaps_s
        self.acked = 0
        self.in_series = False  # an association is open with part of a series acknowledged
        self.errors: list[str] = []

    def run(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(self.series[0][0][0].SOPClassUID,
                                 self.series[0][0][0].file_meta.TransferSyntaxUID)
        for (datasets, _), gap in zip(self.series, self.gaps_s):
            time.sleep(gap)
            assoc = None
            for ds in datasets:
                while True:
                    if assoc is None or not assoc.is_established:
                        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AET)
                        if not assoc.is_established:
                            time.sleep(0.2)
                            continue
                    status = assoc.send_c_store(ds)
                    if status and int(status.Status) == 0x0000:
                        self.acked += 1
                        self.in_series = ds is not datasets[-1]
                        break
                    if status:  # a real refusal is a failure of the test, not a retry
                        self.errors.append(f"{ds.SOPInstanceUID}: {int(status.Status):#06x}")
                        break
                    assoc.abort()
            if assoc is not None and assoc.is_established:
                assoc.release()


def _events(node, name: str) -> int:
    return sum(e["event"] == name for e in node.events())


def _kill_when(node, modality, series, phase: str, rng: random.Random) -> None:
    """Wait for a moment of ``phase`` and ``kill -9`` the node then (each moment with a
    seeded random part): ``receive``, after 1-3 more acknowledged instances, in the middle
    of a series' association; ``predict``, 0-0.3 s after a job starts running; ``send``,
    0-0.05 s after a result is written (its C-STORE to Orthanc is under way). When no such
    moment can come any more (everything sent and done), the kill comes at once."""
    def over() -> bool:
        return not modality.is_alive() and all(node.done(uid) for _, uid in series)

    if phase == "receive":
        target = modality.acked + rng.randint(1, 3)
        wait_until(lambda: (modality.acked >= target and modality.in_series)
                   or not modality.is_alive(), WAIT_S, "instances acknowledged mid-series",
                   interval_s=0.005)
    else:
        event = {"predict": "running", "send": "predicted"}[phase]
        seen = _events(node, event)
        wait_until(lambda: _events(node, event) > seen or over(), WAIT_S, f"a '{event}' event",
                   interval_s=0.01)
        time.sleep(rng.uniform(0, 0.3 if phase == "predict" else 0.05))
    node.kill()


def test_kill_9_at_seeded_random_moments_loses_and_doubles_nothing(orthanc, small_model,
                                                                   ct_files, nodes, tmp_path):
    """Six series arrive over a few seconds; the node is killed six times (twice each while
    receiving, predicting and sending, at seeded random moments) and started again on its
    spool each time. In the end every series, completely received, has exactly one SEG in
    Orthanc, made from all its instances, and the log has no failure."""
    rng = random.Random(25)
    node = start_node(nodes, tmp_path, small_model, orthanc, series_timeout_s=1.5)
    series = _series_set(ct_files, tmp_path, 6, "killed")
    modality = Modality(node.port, series, [rng.uniform(0.5, 2.5) for _ in series])
    modality.start()
    states_at_kill = []
    for phase in ("receive", "predict", "send") * 2:
        _kill_when(node, modality, series, phase, rng)
        jobs = (node.folder / "spool" / "series").glob("*/job.json")
        states_at_kill.append({json.loads(p.read_text())["state"] for p in jobs})
        node.start()
    modality.join(WAIT_S)
    assert not modality.is_alive() and modality.errors == []
    for _, uid in series:
        wait_done(node, uid)
    _check_each_came_back_once(orthanc, series)
    assert _events(node, "failed") == 0
    # the kills did fall inside a series being received and inside a prediction
    hit = set().union(*states_at_kill)
    assert {"receiving", "running"} <= hit, states_at_kill
    assert not list((node.folder / "spool").rglob(".*.tmp*"))  # no torn write left behind
    assert node.status().splitlines()[0] == \
        "receiving 0  queued 0  running 0  sending 0  done 6  failed 0"


def _drip(port: int, datasets, until: threading.Event, interval_s: float) -> None:
    """Send ``datasets`` one per association every ``interval_s`` while ``until`` is not
    set (the series stays in 'receiving'), then the rest at once."""
    for ds in datasets:
        assert push(port, [ds]) == [0x0000]
        until.wait(interval_s)


def _spool_files(node, uid: str) -> list[str]:
    return sorted(p.name for p in (node.folder / "spool" / "series" / uid).rglob("*.dcm"))


def test_retention_purge_removes_finished_series_and_keeps_unfinished(
        orthanc, small_model, ct_files, nodes, tmp_path):
    """``retention_h`` of 1.5 s: a done series and a failed one leave the spool (their job
    records stay, marked purged) while a series still arriving (one slice a second) keeps
its instances; that
    one is purged in its turn once done. Orthanc keeps both SEGs."""
    node = start_node(nodes, tmp_path, small_model, orthanc, series_timeout_s=3,
                      retention_h=1.5 / 3600)
    (done_ds, done_uid), (mr_ds, mr_uid) = _series_set(ct_files, tmp_path, 2, "retention")
    files, open_uid = copy_series(ct_files, tmp_path / "open", "retention open")
    open_ds = [pydicom.dcmread(f) for f in files]  # all 20 slices: 20 s of dripping at most
    for ds in mr_ds:
        ds.Modality = "MR"  # no route: the job fails
    purged = threading.Event()
    dripping = threading.Thread(target=_drip, args=(node.port, open_ds, purged, 1.0))
    dripping.start()
    assert push(node.port, done_ds) == [0x0000] * len(done_ds)
    assert push(node.port, mr_ds) == [0x0000] * len(mr_ds)

    def purged_now(uid):
        return [e for e in node.events() if e["event"] == "purged" and e["series"] == uid]
    wait_until(lambda: purged_now(done_uid) and purged_now(mr_uid), WAIT_S, "the purges")
    open_files = _spool_files(node, open_uid)  # before the rest of the series arrives
    open_job = json.loads((node.folder / "spool" / "series" / open_uid / "job.json").read_text())
    purged.set()
    dripping.join()
    assert _spool_files(node, done_uid) == _spool_files(node, mr_uid) == []
    jobs = {uid: json.loads((node.folder / "spool" / "series" / uid / "job.json").read_text())
            for uid in (done_uid, mr_uid)}
    assert {uid: (j["state"], j["purged"]) for uid, j in jobs.items()} == \
        {done_uid: ("done", True), mr_uid: ("failed", True)}
    # unfinished (still receiving, or queued or running on what had come by then): kept
    assert open_job["state"] not in ("done", "failed") and not open_job["purged"]
    assert 1 <= len(open_files) < len(open_ds)
    assert set(open_files) <= {f"{ds.SOPInstanceUID}.dcm" for ds in open_ds}
    # the series still arriving finishes and is purged in its turn
    wait_done(node, open_uid)
    wait_until(lambda: purged_now(open_uid), WAIT_S, "the purge of the last series")
    assert _spool_files(node, open_uid) == []
    segs = segs_by_series(orthanc)
    assert {uid: len(segs.get(uid, [])) for uid in (done_uid, open_uid, mr_uid)} == \
        {done_uid: 1, open_uid: 1, mr_uid: 0}
    assert node.status().splitlines()[0] == \
        "receiving 0  queued 0  running 0  sending 0  done 2  failed 1"
