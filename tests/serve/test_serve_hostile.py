"""What a hostile or broken modality does to `medseg serve`, beyond the bad series of
test_serve_bad_input: reports and presentation states inside an image series, two
orientations, native pixel data of the wrong length, a transfer syntax nothing decodes,
UIDs that are not UIDs (path separators, "..", empty, over 64 characters), an Affected SOP
Instance UID that is not the dataset's, the same instance sent again, associations that say
nothing, more associations than allowed, and a peer that aborts in the middle of an
instance.

Each must end its job (where there is one) with a one-line reason in the JSON-lines log,
count in ``--status``, send nothing partial to the PACS (a real Orthanc: counted there),
and leave the node listening: every test ends with a good series coming back."""

from __future__ import annotations

import copy
import socket
import time

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .conftest import FEW_SLICES
from .orthanc_server import wait_until
from .serve_helpers import (
    WAIT_S,
    associate,
    copy_series,
    non_image_object,
    push,
    segs_for,
    start_node,
    store_raw,
    wait_done,
)

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
GRAYSCALE_PR = "1.2.840.10008.5.1.4.1.1.11.1"
MPEG2 = "1.2.840.10008.1.2.4.100"


def _series(ct_files, tmp_path, key, change=None) -> tuple[list[Dataset], str]:
    """Slices FEW_SLICES of the shared series under UIDs of their own, ``change``d."""
    files, uid = copy_series(ct_files, tmp_path / key, key, keep=lambda i: i in FEW_SLICES)
    datasets = [pydicom.dcmread(f) for f in files]
    if change is not None:
        change(datasets)
    return datasets, uid


def _non_image(sop_class: str, modality: str, like: Dataset) -> Dataset:
    """A non-image object (``sop_class``) in the study and series of ``like``."""
    return non_image_object(sop_class, modality, like.StudyInstanceUID, like.SeriesInstanceUID)


def _native(datasets) -> None:
    for ds in datasets:
        ds.decompress()  # Explicit VR Little Endian, pixels as they are (pylibjpeg)


def _truncated(datasets) -> None:
    _native(datasets)
    datasets[1].PixelData = datasets[1].PixelData[:1000]


def _too_long(datasets) -> None:
    _native(datasets)
    datasets[2].PixelData = datasets[2].PixelData + bytes(512)


def _mpeg2(datasets) -> None:
    for ds in datasets:  # JPEG 2000 fragments, labelled as MPEG-2 video
        ds.file_meta.TransferSyntaxUID = MPEG2


def _two_orientations(datasets) -> None:
    for ds in datasets[: len(datasets) // 2]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _segs(orthanc) -> int:
    return len(orthanc.seg_instances())


def _good_series_comes_back(node, orthanc, ct_files, tmp_path, key="good") -> None:
    datasets, uid = _series(ct_files, tmp_path, key)
    assert set(push(node.port, datasets)) == {0x0000}
    wait_done(node, uid)
    (seg,) = segs_for(orthanc, uid)
    referenced = {r.ReferencedSOPInstanceUID
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}


def _events(node, event: str) -> list[dict]:
    return [e for e in node.events() if e["event"] == event]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_broken_pixels_and_objects_in_a_series(orthanc, small_model, ct_files, nodes,
                                               tmp_path):
    node = start_node(nodes, tmp_path, small_model, orthanc)
    # a report and a presentation state inside the CT series, the report sent first: the
    # series is routed by its images and segmented, the two left out (and named in the log)
    mixed, mixed_uid = _series(ct_files, tmp_path, "mixed")
    others = [_non_image(BASIC_TEXT_SR, "SR", mixed[0]), _non_image(GRAYSCALE_PR, "PR",
                                                                    mixed[0])]
    assert push(node.port, others[:1]) == [0x0000]
    assert set(push(node.port, mixed + others[1:])) == {0x0000}
    bad = {
        "truncated": _series(ct_files, tmp_path, "truncated", _truncated),
        "too long": _series(ct_files, tmp_path, "too long", _too_long),
        "mpeg2": _series(ct_files, tmp_path, "mpeg2", _mpeg2),
        "orientations": _series(ct_files, tmp_path, "orientations", _two_orientations),
    }
    for datasets, _ in bad.values():
        assert set(push(node.port, datasets)) == {0x0000}
    wait_done(node, mixed_uid)
    (predicted,) = [e for e in _events(node, "predicted") if e["series"] == mixed_uid]
    assert (predicted["instances_used"], predicted["left_out"]) == (len(FEW_SLICES), 2)
    (seg,) = segs_for(orthanc, mixed_uid)
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0]
            .ReferencedInstanceSequence} == {str(ds.SOPInstanceUID) for ds in mixed}

    ends = {name: wait_until(lambda uid=uid: node.finished(uid), WAIT_S, f"the {name} job")
            for name, (_, uid) in bad.items()}
    assert {name: end["event"] for name, end in ends.items()} == dict.fromkeys(bad, "failed")
    reasons = {name: end["reason"] for name, end in ends.items()}
    sop = {name: str(datasets[k].SOPInstanceUID)
           for name, k in (("truncated", 1), ("too long", 2)) for datasets in [bad[name][0]]}
    assert reasons["truncated"] == (f"instance {sop['truncated']}: Pixel Data holds 1000 bytes, "
                                    "its header (Rows 512, Columns 512, BitsAllocated 16) "
                                    "needs 524288")  # 512 * 512 * 2 bytes
    assert reasons["too long"].startswith(f"instance {sop['too long']}: Pixel Data holds "
                                          f"{524288 + 512} bytes")
    assert "MPEG2" in reasons["mpeg2"] and "decoder" in reasons["mpeg2"]
    assert "different ImageOrientationPatient" in reasons["orientations"]
    assert all("\n" not in r for r in reasons.values())
    assert _segs(orthanc) == 1  # nothing of the four bad series reached the PACS
    _good_series_comes_back(node, orthanc, ct_files, tmp_path)
    status = node.status().splitlines()
    assert status[0] == "receiving 0  queued 0  running 0  sending 0  done 2  failed 4"
    assert sum(line.startswith("failed") for line in status[2:]) == 4


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_that_are_no_uids_and_instances_sent_again(orthanc, small_model, ct_files, nodes,
                                                        tmp_path):
    node = start_node(nodes, tmp_path, small_model, orthanc)
    datasets, uid = _series(ct_files, tmp_path, "series")
    one = datasets[0]
    hostile_series = ["../../escaped", "1.2/3", "", "..", "1." + "2" * 70, "1.02.3"]
    hostile_affected = ["../escaped", "1.2/3", ".."]
    assoc = associate(node.port, datasets)
    assert assoc.is_established
    statuses = []
    for value in hostile_series:  # the dataset's SeriesInstanceUID
        ds = copy.deepcopy(one)
        ds.SeriesInstanceUID = value
        statuses.append(store_raw(assoc, ds))
    for value in hostile_affected:  # the C-STORE's Affected SOP Instance UID
        statuses.append(store_raw(assoc, one, affected_uid=value))
    # a valid Affected SOP Instance UID that is not the dataset's own
    statuses.append(store_raw(assoc, one, affected_uid=generate_uid()))
    # the same instance three times in one association, and again in another
    statuses += [store_raw(assoc, ds) for ds in datasets + [one, one]]
    assoc.release()
    assert statuses == [0xC000] * 10 + [0x0000] * (len(datasets) + 2)
    assert push(node.port, [one]) == [0x0000]
    refused = _events(node, "refused")
    assert len(refused) == 10 and all("\n" not in e["reason"] for e in refused)
    assert sum("is not a DICOM UID" in e["reason"] for e in refused) == 9
    assert "is not the C-STORE's Affected SOP Instance UID" in refused[-1]["reason"]
    assert not [p for p in tmp_path.rglob("*escaped*")]
    spool = node.folder / "spool" / "series"
    assert sorted(p.name for p in spool.iterdir()) == [uid]  # no other folder, no "..", "3"
    wait_done(node, uid)
    (ran,) = [e for e in _events(node, "queued") if e["series"] == uid]
    assert ran["instances"] == len(datasets)  # the copies replaced each other
    assert len(segs_for(orthanc, uid)) == 1

    # one instance of the finished series, sent again: not segmented alone (its SEG would
    # replace the complete one); the whole series sent again replaces the SEG, not doubles
    assert push(node.port, [one]) == [0x0000]
    end = wait_until(lambda: (e := node.finished(uid)) and e["event"] == "failed" and e,
                     WAIT_S, "the resent instance's job")
    assert end["reason"] == (f"received again with 1 instance(s), fewer than the "
                             f"{len(datasets)} of its earlier run: not segmented, its result "
                             "would replace the complete one; send the whole series")
    assert len(segs_for(orthanc, uid)) == 1
    assert set(push(node.port, datasets)) == {0x0000}
    wait_until(lambda: len(node.done(uid)) == 2, WAIT_S, "the resent series' job")
    (seg,) = segs_for(orthanc, uid)
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(datasets)
    assert _segs(orthanc) == 1
    lines = node.status().splitlines()
    assert lines[:2] == ["receiving 0  queued 0  running 0  sending 0  done 1  failed 0",
                         "associations rejected 0  aborted 0  instances refused 10"]


def _closed_by_node(sock: socket.socket, within_s: float) -> bool:
    """Whether the node closes ``sock`` (a connection that sent nothing) within the time."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def _hold_two(port: int, within_s: float = 10) -> tuple:
    """Two associations open at once on the node at ``port``. pynetdicom counts an
    association toward ``max_associations`` until its thread has exited, a moment after the
    node has logged its end, so a pair opened just then may see one of them rejected (and
    logged as such): the pair is then released and tried again, for up to ``within_s``."""
    deadline = time.monotonic() + within_s
    while True:
        pair = associate(port), associate(port)
        if all(assoc.is_established for assoc in pair):
            return pair
        for assoc in pair:
            if assoc.is_established:
                assoc.release()
        assert time.monotonic() < deadline, "two associations were never open at once"
        time.sleep(0.2)


def test_silent_idle_surplus_and_aborting_peers(orthanc, small_model, ct_files, nodes,
                                                tmp_path):
    """max_associations 2, acse_timeout_s 1 s, network_timeout_s 3 s: a connection that
    never asks for an association and an association that sends nothing are dropped within
    a few seconds; a third association while two are open is rejected (logged); a peer
    that aborts in the middle of an instance leaves a series that fails, not a partial
    SEG."""
    node = start_node(nodes, tmp_path, small_model, orthanc, max_associations=2,
                      acse_timeout_s=1, network_timeout_s=3)
    # silence before and after associating
    silent = socket.create_connection(("127.0.0.1", node.port))
    idle = associate(node.port)
    assert idle.is_established
    assert _closed_by_node(silent, 10)
    wait_until(lambda: idle.is_aborted, 15, "the idle association's abort")
    silent.close()
    wait_until(lambda: _events(node, "aborted"), 15, "the node's line on the abort")
    # two associations held open; the third is rejected while they last
    first, second = _hold_two(node.port)
    before = len(_events(node, "rejected"))
    third = associate(node.port)
    assert third.is_rejected
    for assoc in (first, second):
        assoc.release()
    rejected = _events(node, "rejected")
    assert len(rejected) == before + 1
    assert {e["reason"] for e in rejected} == {
        "more than max_associations (2) associations at once"}

    # A-ABORT in the middle of the third instance: two instances are stored, the third
    # never is, and the series fails instead of being segmented without it
    datasets, uid = _series(ct_files, tmp_path, "aborted")
    assoc = associate(node.port, datasets)
    assert [store_raw(assoc, ds) for ds in datasets[:2]] == [0x0000, 0x0000]
    assert store_raw(assoc, datasets[2], fragments=3) is None
    assoc.abort()
    end = wait_until(lambda: node.finished(uid), WAIT_S, "the aborted series' job")
    assert end["event"] == "failed"
    assert end["reason"] == ("the association from TESTSCU was aborted in the middle of an "
                             "instance of the series (2 instances stored): not segmented, a "
                             "partial series; send the series again")
    assert len(list((node.folder / "spool" / "series" / uid / "instances").glob("*.dcm"))) \
        == 2
    aborted = _events(node, "aborted")  # the idle one, this one (and any held one timed out)
    assert aborted[0]["mid_instance"] is False
    (cut,) = [e for e in aborted if e["mid_instance"]]
    assert cut["series"] == [uid] and cut["calling_aet"] == "TESTSCU"
    assert segs_for(orthanc, uid) == []
    # sent again whole, the series comes back; so does another
    assert set(push(node.port, datasets)) == {0x0000}
    wait_until(lambda: node.done(uid), WAIT_S, "the series sent again")
    assert len(segs_for(orthanc, uid)) == 1
    _good_series_comes_back(node, orthanc, ct_files, tmp_path)
    assert _segs(orthanc) == 2
    lines = node.status().splitlines()
    assert lines[:2] == ["receiving 0  queued 0  running 0  sending 0  done 2  failed 0",
                         f"associations rejected {len(rejected)}  "
                         f"aborted {len(_events(node, 'aborted'))}  "
                         "instances refused 0"]
