"""`medseg serve` against a real Orthanc: the PACS pushes the shared CT series to the node
(REST /modalities/{id}/store) and the DICOM-SEG comes back into Orthanc.

References: the labels of ``medseg predict`` on the same series (read back from the SEG with
medseg's reader), and independently of medseg the threshold network's rule applied to each
source slice's pixels (pydicom), matched to the SEG's frames by their DICOM positions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from predict.predict_helpers import LABEL_NAMES, threshold_labels

from medseg.serve.config import Route
from medseg.serve.process import result_uids

from .conftest import FEW_SLICES
from .orthanc_server import free_port, wait_until
from .serve_helpers import (
    NODE_AET,
    copy_series,
    push,
    WAIT_S,
    dciodvfy_errors,
    seg_frames_by_position,
    segs_for,
    series_uid_of,
    slice_hu,
    start_node,
    wait_done,
)

def _check_seg_is_prediction(seg: pydicom.Dataset, files: list[Path], model: Path,
                             tmp_path: Path) -> None:
    """The SEG against `medseg predict` (same series) and against the threshold rule."""
    from medseg.cli import main
    from medseg.io import read_volume
    from medseg.io.dicom.labels import read_dicom_labels

    series = files[0].parent
    reference = tmp_path / "predict.nii.gz"
    assert main(["predict", "-m", str(model), "-i", str(series), "-o", str(reference),
                 "--device", "cpu"]) == 0
    expected = read_volume(reference).array
    seg_path = tmp_path / "returned_seg.dcm"
    seg.save_as(seg_path)
    decoded = read_dicom_labels(seg_path, series)
    np.testing.assert_array_equal(decoded.array, expected)
    assert set(np.unique(expected)) == {0, 1, 2}
    # independent of medseg: each source slice thresholded == the SEG's frame at its position
    frames = seg_frames_by_position(seg)
    for path in files:
        ds = pydicom.dcmread(path)
        hu = slice_hu(ds)
        pos = tuple(np.round(np.array(ds.ImagePositionPatient, float), 2))
        frame = frames.get(pos, np.zeros(hu.shape, np.uint8))
        np.testing.assert_array_equal(frame, threshold_labels(hu), err_msg=path.name)
    errors = dciodvfy_errors(seg_path)
    assert errors in (None, []), errors


def test_orthanc_pushes_a_series_and_gets_its_seg(orthanc, serve_model, ct_files, nodes,
                                                  tmp_path):
    node = start_node(nodes, tmp_path, serve_model, orthanc)
    series_uid = series_uid_of(ct_files)
    uploaded = orthanc.upload(ct_files)
    assert orthanc.store("medseg", [uploaded[0]["ParentSeries"]]).ok
    wait_until(lambda: segs_for(orthanc, series_uid), WAIT_S, "the DICOM-SEG in Orthanc")
    wait_done(node, series_uid)
    (seg,) = segs_for(orthanc, series_uid)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(
        ct_files[0], stop_before_pixels=True).StudyInstanceUID
    referenced = {r.ReferencedSOPInstanceUID
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                          for f in ct_files}
    # the SOP Instance UID is the one derived from the series and the route's model
    route = Route(model=str(serve_model), format="seg")
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == result_uids(series_uid, route)
    _check_seg_is_prediction(seg, ct_files, serve_model, tmp_path)
    status = node.status()
    assert status.splitlines()[0] == "receiving 0  queued 0  running 0  sending 0  done 1  failed 0"


def test_unknown_calling_ae_is_refused(orthanc, serve_model, nodes, tmp_path):
    """Unknown calling AE titles, a wrong called AE title and one association over
    ``max_associations`` are rejected, each logged with its own reason."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = start_node(nodes, tmp_path, serve_model, orthanc, max_associations=2)
    results = {}
    for aet in ("STRANGER", "TESTSCU"):
        ae = AE(ae_title=aet)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        results[aet] = assoc.is_established
        if assoc.is_established:
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    assert results == {"STRANGER": False, "TESTSCU": True}
    ae = AE(ae_title="TESTSCU")  # an allowed caller that names another node
    ae.add_requested_context(Verification)
    assert not ae.associate("127.0.0.1", node.port, ae_title="OTHERNODE").is_established
    held = [ae.associate("127.0.0.1", node.port, ae_title=NODE_AET) for _ in range(3)]
    assert [a.is_established for a in held] == [True, True, False]  # the limit is 2
    for assoc in held[:2]:
        assoc.release()
    # Orthanc itself is allowed: its C-ECHO through the REST API succeeds
    assert orthanc.post("/modalities/medseg/echo", {}).ok
    rejected = [e for e in node.events() if e["event"] == "rejected"]
    assert [(e["calling_aet"], e["reason"]) for e in rejected] == [
        ("STRANGER", "calling AE title not in allowed_calling_aets"),
        ("TESTSCU", "called AE title 'OTHERNODE' is not this node's ('MEDSEG')"),
        ("TESTSCU", "more than max_associations (2) associations at once")]


def test_kill_mid_series_restart_and_the_seg_arrives_once(orthanc, serve_model, ct_files, nodes,
                                                          tmp_path):
    """Half the series, kill -9, restart, the other half: one SEG over all 20 slices."""
    node = start_node(nodes, tmp_path, serve_model, orthanc, series_timeout_s=10)
    series_uid = series_uid_of(ct_files)
    uploaded = orthanc.upload(ct_files)
    ids = [u["ID"] for u in uploaded]
    assert orthanc.store("medseg", ids[:10]).ok
    node.kill()
    spooled = list((node.folder / "spool" / "series" / series_uid / "instances").glob("*.dcm"))
    assert len(spooled) == 10  # every acknowledged instance survived the kill
    node.start()
    assert orthanc.store("medseg", ids[10:]).ok
    wait_until(lambda: segs_for(orthanc, series_uid), WAIT_S, "the DICOM-SEG in Orthanc")
    wait_done(node, series_uid)
    (seg,) = segs_for(orthanc, series_uid)
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    assert len(node.done(series_uid)) == 1
    _check_seg_is_prediction(seg, ct_files, serve_model, tmp_path)


def test_kill_mid_send_restart_and_the_seg_arrives_once(orthanc, serve_model, ct_files, nodes,
                                                        tmp_path):
    """(a) Killed while its result waits to be sent: the restarted node sends the result from
    the spool (no second prediction). (b) Killed after the PACS stored the result but before
    the job said so: the restarted node sends it again, and the PACS still holds one SEG."""
    closed = free_port()  # nothing listens there: every send fails until the config is fixed
    node = start_node(nodes, tmp_path, serve_model, orthanc, send_attempts=1000,
                  destination={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": closed})
    series_uid = series_uid_of(ct_files)
    uploaded = orthanc.upload(ct_files)
    assert orthanc.store("medseg", [uploaded[0]["ParentSeries"]]).ok
    wait_until(lambda: [e for e in node.events() if e["event"] == "send_failed"], WAIT_S,
               "a failed send")
    node.kill()
    node.config["destination"] = {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                  "port": orthanc.dicom_port}
    node.start()
    wait_done(node, series_uid)
    (seg,) = segs_for(orthanc, series_uid)
    assert [e["event"] for e in node.events()].count("predicted") == 1
    # (b) the window between the PACS's acknowledgement and the job's state on disk
    node.kill()
    job_path = node.folder / "spool" / "series" / series_uid / "job.json"
    job = json.loads(job_path.read_text())
    assert job["state"] == "done"
    job["state"] = "sending"
    job_path.write_text(json.dumps(job))
    node.start()
    wait_done(node, series_uid, count=2)
    (again,) = segs_for(orthanc, series_uid)
    assert again.SOPInstanceUID == seg.SOPInstanceUID
    assert len(orthanc.seg_instances()) == 1


def test_dicomweb_destination_stores_with_stow_rs(orthanc, serve_model, ct_files, nodes,
                                                  tmp_path):
    if not orthanc.has_dicomweb:
        pytest.skip("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is absent")
    node = start_node(nodes, tmp_path, serve_model, orthanc,
                  destination={"dicomweb": f"{orthanc.url}/dicom-web"})
    series_uid = series_uid_of(ct_files)
    uploaded = orthanc.upload(ct_files)
    assert orthanc.store("medseg", [uploaded[0]["ParentSeries"]]).ok
    wait_done(node, series_uid)
    (seg,) = segs_for(orthanc, series_uid)
    route = Route(model=str(serve_model), format="seg")
    assert seg.SOPInstanceUID == result_uids(series_uid, route)[1]


def test_an_rtstruct_route_sends_an_rtstruct_that_rt_utils_reads(orthanc, small_model, ct_files,
                                                                 nodes, tmp_path):
    """``format: rtstruct``: the RTSTRUCT in Orthanc references the series (study, frame of
    reference, every slice), and rt-utils (TotalSegmentator's RTSTRUCT library) reads back
    the card's ROI names and, on every slice, the threshold rule applied to the pixels."""
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils (the oracle) is not installed")
    routes = [{"match": {"modality": "CT"}, "model": str(small_model), "format": "rtstruct"}]
    node = start_node(nodes, tmp_path, small_model, orthanc, routes=routes)
    files, uid = copy_series(ct_files, tmp_path / "series", "rtstruct",
                             keep=lambda i: i in FEW_SLICES)
    datasets = [pydicom.dcmread(f) for f in files]
    assert push(node.port, datasets) == [0x0000] * len(datasets)
    wait_done(node, uid)
    (instance,) = orthanc.seg_instances("RTSTRUCT")
    assert orthanc.seg_instances() == []  # no SEG besides
    rt_file = tmp_path / "returned_rtstruct.dcm"
    rt_file.write_bytes(orthanc.instance_file(instance))
    ds = pydicom.dcmread(rt_file)
    assert (ds.Modality, ds.StudyInstanceUID) == ("RTSTRUCT", datasets[0].StudyInstanceUID)
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == result_uids(
        uid, Route(model=str(small_model), format="rtstruct"))
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == uid
    assert {c.ReferencedSOPInstanceUID for c in referenced.ContourImageSequence} == \
        {str(d.SOPInstanceUID) for d in datasets}
    rt = rt_utils.RTStructBuilder.create_from(str(files[0].parent), str(rt_file))
    assert rt.get_roi_names() == [LABEL_NAMES[1], LABEL_NAMES[2]]
    # rt-utils' slices follow the normal; ours by position along it, from the tags
    order = np.argsort([float(np.dot(np.cross(*np.reshape(d.ImageOrientationPatient, (2, 3))),
                                     d.ImagePositionPatient)) for d in datasets])
    expected = np.stack([threshold_labels(slice_hu(datasets[k])) for k in order],
                        axis=-1)  # (rows, columns, slices)
    for value, name in LABEL_NAMES.items():
        mask = rt.get_roi_mask_by_name(name)
        np.testing.assert_array_equal(mask, expected == value, err_msg=name)
