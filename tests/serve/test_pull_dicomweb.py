"""`medseg predict` pulling a study from a real Orthanc over DICOMweb (QIDO-RS, WADO-RS) and
storing its DICOM-SEG back with STOW-RS (Orthanc's DICOMweb plugin, orthanc-dicomweb).

References: the SEG decoded by highdicom, per source instance, against (a) the SEG `medseg
predict` writes for the same series read from the local folder, also decoded by highdicom,
and (b) independently of medseg, the threshold network's rule applied to each source
slice's pixels (pydicom); the re-run against Orthanc's own instance count."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from predict.predict_helpers import LABEL_NAMES, threshold_labels

from medseg.cli import main
from medseg.errors import UsageError
from medseg.io import read_volume
from medseg.serve.config import Route
from medseg.serve.dicomweb import DicomwebLocation, parse_location
from medseg.serve.process import result_uids

from .orthanc_server import free_port
from .serve_helpers import copy_series, segs_for, series_uid_of



@pytest.fixture
def dicomweb(orthanc):
    """Orthanc with its DICOMweb plugin, and the base URL medseg names it by."""
    if not orthanc.has_dicomweb:
        pytest.skip("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb) is absent")
    return orthanc, f"dicomweb://127.0.0.1:{orthanc.http_port}/dicom-web"


def _study_of(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _predict(*args: str) -> int:
    return main(["predict", *args, "--device", "cpu"])


def _instances(orthanc) -> int:
    return int(orthanc.get("/statistics")["CountInstances"])


def _labels_by_instance(seg_path: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """SOP Instance UID of each source slice -> its (rows, cols) label values, decoded by
    highdicom (segment n -> the label its Segment Label names)."""
    seg = hd.seg.segread(seg_path)
    values = {name: value for value, name in LABEL_NAMES.items()}
    numbers = {int(s.SegmentNumber): values[str(s.SegmentLabel)] for s in seg.SegmentSequence}
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    masks = seg.get_pixels_by_source_instance(uids, segment_numbers=sorted(numbers))
    out = {}
    for uid, mask in zip(uids, masks):  # (rows, cols, segments), binary
        plane = np.zeros(mask.shape[:2], np.uint8)
        for k, number in enumerate(sorted(numbers)):
            plane[mask[..., k] > 0] = numbers[number]
        out[uid] = plane
    return out


def _check_seg(seg: pydicom.Dataset, files: list[Path], model: Path, tmp_path: Path) -> None:
    """The SEG references the series, and decodes to `medseg predict`'s labels of the local
    series and to the threshold rule on each slice's pixels."""
    referenced = {r.ReferencedSOPInstanceUID
                  for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                          for f in files}
    assert seg.StudyInstanceUID == _study_of(files)
    pulled = tmp_path / "pulled_seg.dcm"
    seg.save_as(pulled)
    local = tmp_path / "local_seg.dcm"
    assert _predict("-m", str(model), "-i", str(files[0].parent), "-o", str(local)) == 0
    got, expected = _labels_by_instance(pulled, files), _labels_by_instance(local, files)
    for path in files:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        np.testing.assert_array_equal(got[uid], expected[uid], err_msg=path.name)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(got[uid], threshold_labels(hu), err_msg=path.name)
    assert {1, 2} <= set(np.unique(np.stack(list(got.values()))))


def test_pull_stores_the_seg_and_a_rerun_replaces_it(dicomweb, serve_model, ct_files,
                                                     tmp_path, capfd):
    orthanc, base = dicomweb
    orthanc.upload(ct_files)
    series_uid = series_uid_of(ct_files)
    study = f"{base}?StudyInstanceUID={_study_of(ct_files)}"
    before = _instances(orthanc)
    assert before == len(ct_files)

    assert _predict("-m", str(serve_model), "-i", study, "-o", base) == 0
    (seg,) = segs_for(orthanc, series_uid)
    assert seg.Modality == "SEG" and _instances(orthanc) == before + 1
    # the node's UIDs: one model, one series, one format -> one object, whoever made it
    route = Route(model=str(serve_model), format="seg")
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == result_uids(series_uid, route)
    _check_seg(seg, ct_files, serve_model, tmp_path)

    capfd.readouterr()
    assert _predict("-m", str(serve_model), "-i", study, "-o", base) == 0
    err = capfd.readouterr().err
    (again,) = segs_for(orthanc, series_uid)
    assert again.SOPInstanceUID == seg.SOPInstanceUID and _instances(orthanc) == before + 1
    # the first run's SEG is now a series of the study: skipped, in one line
    skipped = [line for line in err.splitlines() if ": skipped: " in line]
    assert len(skipped) == 1 and seg.SeriesInstanceUID in skipped[0] and "DICOM-SEG" in skipped[0]

    # the local series stored through DICOMweb: the same object again
    assert _predict("-m", str(serve_model), "-i", str(ct_files[0].parent), "-o", base) == 0
    (local,) = segs_for(orthanc, series_uid)
    assert local.SOPInstanceUID == seg.SOPInstanceUID and _instances(orthanc) == before + 1


def test_pull_rtstruct_is_another_object(dicomweb, serve_model, ct_files, tmp_path):
    """``--dicom-format rtstruct``: the RTSTRUCT of the series (4 of its slices: contouring
    all 20 takes half a minute) under the UIDs of the rtstruct route."""
    orthanc, base = dicomweb
    files, series_uid = copy_series(ct_files, tmp_path / "four", "pull rtstruct",
                                    keep=lambda i: 8 <= i < 12)
    orthanc.upload(files)
    study = f"{base}?StudyInstanceUID={_study_of(files)}"
    assert _predict("-m", str(serve_model), "-i", study, "-o", base,
                    "--dicom-format", "rtstruct") == 0
    (found,) = orthanc.find_series({"Modality": "RTSTRUCT"})
    rt = pydicom.dcmread(io.BytesIO(orthanc.instance_file(found["Instances"][0])))
    route = Route(model=str(serve_model), format="rtstruct")
    assert (rt.SeriesInstanceUID, rt.SOPInstanceUID) == result_uids(series_uid, route)
    contours = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert contours.RTReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert {int(r.ROINumber): str(r.ROIName) for r in rt.StructureSetROISequence} == LABEL_NAMES
    contoured = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                 for roi in rt.ROIContourSequence for c in roi.ContourSequence}
    assert contoured == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                         for f in files}


def test_a_bad_series_is_one_line_and_the_others_go_through(dicomweb, serve_model, ct_files,
                                                            tmp_path, capfd, monkeypatch):
    """A study with the good series and a copy missing slice 10: the good one is written
    into a local folder as `medseg predict` writes it, the broken one fails in one line,
    the exit code is 1, and the downloads are gone; `&SeriesInstanceUID=` reads the good
    one alone."""
    orthanc, base = dicomweb
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    broken, broken_uid = copy_series(ct_files, tmp_path / "broken", "pull broken",
                                     keep=lambda i: i != 10)
    for path in broken:  # into the good series' study
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = _study_of(ct_files)
        ds.save_as(path)
    orthanc.upload([*ct_files, *broken])
    good_uid = series_uid_of(ct_files)
    study = f"{base}?StudyInstanceUID={_study_of(ct_files)}"
    out = tmp_path / "out"

    capfd.readouterr()
    assert _predict("-m", str(serve_model), "-i", study, "-o", str(out)) == 1
    err = capfd.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [f"{good_uid}.nii.gz"]
    failed = [line for line in err.splitlines() if ": failed: " in line]
    assert len(failed) == 1 and broken_uid in failed[0], err
    reference = tmp_path / "local.nii.gz"
    assert _predict("-m", str(serve_model), "-i", str(ct_files[0].parent), "-o",
                    str(reference)) == 0
    np.testing.assert_array_equal(read_volume(out / f"{good_uid}.nii.gz").array,
                                  read_volume(reference).array)
    np.testing.assert_array_equal(read_volume(out / f"{good_uid}.nii.gz").affine,
                                  read_volume(reference).affine)

    one = tmp_path / "one.nii.gz"
    assert _predict("-m", str(serve_model), "-i", f"{study}&SeriesInstanceUID={good_uid}",
                    "-o", str(one)) == 0
    np.testing.assert_array_equal(read_volume(one).array, read_volume(reference).array)
    assert _instances(orthanc) == len(ct_files) + len(broken)  # nothing stored
    assert list(scratch.iterdir()) == []


def test_unknown_study_and_unreachable_service_are_one_line(dicomweb, serve_model, capfd,
                                                           monkeypatch):
    monkeypatch.setattr("medseg.serve.dicomweb.RETRY_ATTEMPTS", 1)  # no 7 s of back-off
    orthanc, base = dicomweb
    nobody = f"dicomweb://127.0.0.1:{free_port()}/dicom-web"
    cases = [
        (f"{base}?StudyInstanceUID=1.2.3.4", base, 1, "no such study"),
        (f"{nobody}?StudyInstanceUID=1.2.3.4", base, 1, "cannot connect"),
        (f"{base}?StudyInstanceUID=1.2.3", f"{nobody}", 1, "no such study"),
        (f"{base}?StudyUID=1.2.3", base, 2, "did you mean 'StudyInstanceUID'"),
        (f"{base}?StudyInstanceUID=1.2.3", f"{base}?StudyInstanceUID=1.2.3", 2, "no query"),
    ]
    for source, target, code, words in cases:
        capfd.readouterr()
        assert _predict("-m", str(serve_model), "-i", source, "-o", target) == code, source
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("medseg: error:") and words in err[0], err
    assert _instances(orthanc) == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("dicomweb://pacs:8042/dicom-web?StudyInstanceUID=1.2.3",
     DicomwebLocation("http://pacs:8042/dicom-web", "1.2.3")),
    ("dicomwebs://pacs/dicom-web/?StudyInstanceUID=1.2&SeriesInstanceUID=1.2.4",
     DicomwebLocation("https://pacs/dicom-web", "1.2", "1.2.4")),
    ("DICOMWEB://pacs/wado", DicomwebLocation("http://pacs/wado")),
])
def test_parse_location(text, expected):
    assert parse_location(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("http://pacs/dicom-web", "expected dicomweb://"),
    ("dicomweb:///dicom-web?StudyInstanceUID=1.2", "expected dicomweb://"),
    ("dicomweb://pacs/dw?SeriesInstanceUID=1.2", "needs its StudyInstanceUID"),
    ("dicomweb://pacs/dw?StudyInstanceUID=1.2&StudyInstanceUID=1.3", "given twice"),
    ("dicomweb://pacs/dw?StudyInstanceUID=../../etc", "not a DICOM UID"),
    ("dicomweb://pacs/dw?StudyInstanceUID=1.02", "not a DICOM UID"),
    ("dicomweb://pacs/dw?SeriesInstanceUid=1.2", "did you mean 'SeriesInstanceUID'"),
])
def test_parse_location_refuses_in_one_line(text, words):
    with pytest.raises(UsageError, match=words.replace("?", r"\?")) as info:
        parse_location(text)
    assert "\n" not in str(info.value)
