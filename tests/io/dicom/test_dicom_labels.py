"""DICOM-SEG and RTSTRUCT read as label maps on their reference series (read_labels).

Truths: dcmqi's own NRRD exports of its SEGs, matplotlib's point-in-polygon on
rt-utils' contours, and the label maps medseg wrote (round trips).
"""

from __future__ import annotations

import copy
import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_label_helpers import SAMPLES, TOTALSEG, dciodvfy_errors, labels_on_series, shared

from medseg.errors import DataError, UsageError
from medseg.io import read_volume, write_volume
from medseg.io.dicom.derived import DerivedSeries
from medseg.io.dicom.seg import write_dicom_seg
from medseg.io.labels import read_labels, write_labels
from medseg.volume import LabelMap, Volume

DCMQI = SAMPLES / "dcmqi"
MOCK = SAMPLES / "rt_utils" / "mock_data"


def test_dcmqi_liver_equals_its_nrrd():
    labels = read_labels(shared(DCMQI / "liver.dcm"), reference=DCMQI / "ct-3slice")
    truth = read_volume(DCMQI / "liver_seg.nrrd")
    assert labels.same_grid(truth) and labels.same_grid(read_volume(DCMQI / "ct-3slice"))
    assert np.array_equal(labels.array, truth.array)
    assert labels.meta["label_names"] == {1: "Liver"}


@pytest.mark.parametrize("size", ["23x38x3", "24x38x3"])
def test_dcmqi_small_series_seg_equals_its_nrrd(size):
    folder = shared(DCMQI / size)
    labels = read_labels(folder / "seg" / "label.seg", reference=folder / "image")
    truth = read_volume(folder / "nrrd" / "label.nrrd")
    assert labels.same_grid(truth) and np.array_equal(labels.array, truth.array)


def _overlap_truth(policy: str) -> np.ndarray:
    """Segments 1..5 of partial_overlaps from dcmqi's NRRDs (-1 holds 1, 4, 5; -2: 2; -3: 3)."""
    files = {1: 1, 2: 2, 3: 3, 4: 1, 5: 1}
    out = np.zeros(read_volume(DCMQI / "partial_overlaps-1.nrrd").spatial_shape, np.uint8)
    for segment in (range(1, 6) if policy == "last" else range(5, 0, -1)):
        mask = read_volume(DCMQI / f"partial_overlaps-{files[segment]}.nrrd").array == segment
        out[mask] = segment
    return out


def test_partial_overlaps_raise_unless_a_policy_is_given():
    seg = shared(DCMQI / "partial_overlaps.dcm")
    with pytest.raises(DataError, match=r"segments 'GREEN' \(1\) and 'ORANGE' \(2\) overlap") as e:
        read_labels(seg, reference=DCMQI / "ct-3slice")
    assert "--overlap first|last" in str(e.value) and "\n" not in str(e.value)
    for policy in ("first", "last"):
        labels = read_labels(seg, reference=DCMQI / "ct-3slice", overlap=policy)
        assert np.array_equal(labels.array, _overlap_truth(policy)), policy
    assert labels.meta["label_names"][5] == "DARK_BLUE"


def test_unknown_overlap_policy_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean 'first'"):
        read_labels(DCMQI / "liver.dcm", reference=DCMQI / "ct-3slice", overlap="firts")


def _polygon_truth(rt: pydicom.Dataset, series: Volume) -> np.ndarray:
    """Even-odd rasterisation with matplotlib: pixel centres in an odd number of contours."""
    from matplotlib.path import Path as MplPath

    slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.meta["dicom_files"]]
    out = np.zeros(series.spatial_shape, dtype=np.uint8)
    for contour in rt.ROIContourSequence[0].ContourSequence:
        p = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        k = [abs(float(s.ImagePositionPatient[2]) - p[0, 2]) < 1e-3 for s in slices].index(True)
        s = slices[k]
        rows, cols = np.mgrid[0:int(s.Rows), 0:int(s.Columns)]
        x = float(s.ImagePositionPatient[0]) + cols * float(s.PixelSpacing[1])  # axial IOP
        y = float(s.ImagePositionPatient[1]) + rows * float(s.PixelSpacing[0])
        inside = MplPath(p[:, :2]).contains_points(np.column_stack([x.ravel(), y.ravel()]))
        # this series is LPS-oriented: voxel (i, j) <-> pixel (row j, column i)
        out[:, :, k] ^= inside.reshape(rows.shape).T.astype(np.uint8)
    return out


def test_rt_utils_rtstruct_rasterises_onto_mock_data():
    rt_file = shared(MOCK / "rt.dcm")
    labels = read_labels(rt_file, reference=MOCK)
    series = read_volume(MOCK)
    assert labels.same_grid(series) and labels.meta["label_names"] == {1: "ROI-1"}
    truth = _polygon_truth(pydicom.dcmread(rt_file), series)
    assert 1000 < truth.sum() and np.array_equal(labels.array, truth)
    assert labels.array[:, :, 1].sum() == 0  # both contours are on the first slice


@pytest.mark.parametrize("name", ["invalid_reference_rt.dcm", "non_existent_reference_rt.dcm"])
def test_broken_references_give_one_line_errors(name):
    with pytest.raises(DataError, match="not in the reference series") as e:
        read_labels(shared(MOCK / name), reference=MOCK)
    message = str(e.value)
    assert "\n" not in message and name in message and str(MOCK) in message


def test_seg_onto_another_series_names_both_files():
    with pytest.raises(DataError) as e:
        read_labels(shared(DCMQI / "liver.dcm"), reference=MOCK)
    assert "liver.dcm" in str(e.value) and str(MOCK) in str(e.value)


def test_another_frame_of_reference_is_refused(tmp_path):
    rt = pydicom.dcmread(shared(MOCK / "rt.dcm"))
    for roi in rt.ROIContourSequence:  # no instance references left: only the FoR can tell
        for contour in roi.ContourSequence:
            del contour.ContourImageSequence
    del rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    rt.save_as(tmp_path / "for.dcm")
    with pytest.raises(DataError, match="frame of reference .* differs"):
        read_labels(tmp_path / "for.dcm", reference=MOCK)


def test_overlapping_rois_are_an_error(tmp_path):
    rt = pydicom.dcmread(shared(MOCK / "rt.dcm"))
    twin = copy.deepcopy(rt.StructureSetROISequence[0])
    twin.ROINumber, twin.ROIName = 2, "twin"
    contours = copy.deepcopy(rt.ROIContourSequence[0])
    contours.ReferencedROINumber = 2
    rt.StructureSetROISequence.append(twin)
    rt.ROIContourSequence.append(contours)
    rt.save_as(tmp_path / "twin.dcm")
    with pytest.raises(DataError, match=r"ROIs 'ROI-1' \(1\) and 'twin' \(2\) overlap"):
        read_labels(tmp_path / "twin.dcm", reference=MOCK)
    last = read_labels(tmp_path / "twin.dcm", reference=MOCK, overlap="last")
    first = read_labels(tmp_path / "twin.dcm", reference=MOCK, overlap="first")
    assert set(np.unique(last.array)) == {0, 2} and set(np.unique(first.array)) == {0, 1}


def test_missing_reference_asks_for_it():
    with pytest.raises(UsageError, match="--reference SERIES_DIR"):
        read_labels(shared(DCMQI / "liver.dcm"))


def test_seg_round_trip_on_real_ct_is_identical(tmp_path):
    """TotalSegmentator's values are not contiguous (37 of 1..117 on this series): they come
    back as they were, and so do their names, while the segments are numbered 1..n as
    highdicom and the standard want."""
    series = read_volume(shared(TOTALSEG / "ct_dicom"))
    labels = labels_on_series(read_volume(TOTALSEG / "seg.nii.gz"), series)
    names = {int(k): v for k, v in json.loads((TOTALSEG / "labels.json").read_text()).items()}
    out = write_dicom_seg(labels, tmp_path / "seg.dcm",
                          DerivedSeries(series.meta["dicom_files"], names))
    back = read_labels(out, reference=TOTALSEG / "ct_dicom")
    present = [int(v) for v in np.unique(labels.array) if v > 0]
    assert present != list(range(1, len(present) + 1))  # gaps, or the test proves nothing
    assert back.same_grid(series) and np.array_equal(back.array, labels.array)
    assert back.meta["label_names"] == {v: names[v] for v in present}
    assert dciodvfy_errors(out) == []
    segments = hd.seg.segread(out).SegmentSequence
    assert [int(s.SegmentNumber) for s in segments] == list(range(1, len(present) + 1))
    assert [str(s.SegmentLabel) for s in segments] == [names[v] for v in present]


def test_image_label_files_are_checked_integers(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    write_volume(Volume(np.full((4, 4, 3), 2.0, np.float32), affine), tmp_path / "f.nii.gz")
    labels = read_labels(tmp_path / "f.nii.gz")
    assert isinstance(labels, LabelMap) and labels.array.dtype == np.uint8
    assert labels.array.max() == 2
    write_volume(Volume(np.full((4, 4, 3), 0.5, np.float32), affine), tmp_path / "h.nii.gz")
    with pytest.raises(DataError, match=r"h\.nii\.gz: label map holds non-integer label 0\.5"):
        read_labels(tmp_path / "h.nii.gz")


def test_write_labels_dispatches_on_format(tmp_path):
    series = read_volume(shared(MOCK))
    array = np.zeros(series.spatial_shape, dtype=np.uint8)
    array[200:240, 100:130, 0] = 1
    labels = LabelMap(array, series.affine)
    files = series.meta["dicom_files"]
    for fmt, sop in (("seg", "1.2.840.10008.5.1.4.1.1.66.4"),
                     ("rtstruct", "1.2.840.10008.5.1.4.1.1.481.3")):
        out = write_labels(labels, tmp_path / f"{fmt}.dcm", {1: "box"}, reference_files=files,
                           dicom_format=fmt)
        assert pydicom.dcmread(out).SOPClassUID == sop
        assert np.array_equal(read_labels(out, reference=MOCK).array, array)
    with pytest.raises(UsageError, match="--reference SERIES_DIR"):
        write_labels(labels, tmp_path / "x.dcm", {1: "box"})
    with pytest.raises(UsageError, match="did you mean 'rtstruct'"):
        write_labels(labels, tmp_path / "x.dcm", reference_files=files, dicom_format="rtstuct")


# -- CLI and manifests --------------------------------------------------------------------------
def test_cli_convert_labels_to_rtstruct_and_back(tmp_path):
    from medseg.cli import main

    series = read_volume(shared(MOCK))
    array = np.zeros(series.spatial_shape, dtype=np.uint8)
    array[300:340, 250:300, 1] = 2
    write_volume(LabelMap(array, series.affine), tmp_path / "lab.nii.gz")
    (tmp_path / "names.json").write_text(json.dumps({"2": "tumour"}))
    rt_path, back = tmp_path / "lab.dcm", tmp_path / "back.nii.gz"
    assert main(["convert", str(tmp_path / "lab.nii.gz"), "--reference", str(MOCK), str(rt_path),
                 "--dicom-format", "rtstruct", "--labels", str(tmp_path / "names.json")]) == 0
    ds = pydicom.dcmread(rt_path)
    assert ds.Modality == "RTSTRUCT" and ds.StructureSetROISequence[0].ROIName == "tumour"
    assert main(["convert", str(rt_path), "--reference", str(MOCK), str(back)]) == 0
    assert np.array_equal(read_volume(back).array, array)  # label value 2 stays 2


def test_cli_convert_without_reference_is_a_usage_error(tmp_path, capsys):
    from medseg.cli import main

    assert main(["convert", str(shared(DCMQI / "liver.dcm")), str(tmp_path / "l.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reference SERIES_DIR" in err and len(err.splitlines()) == 1


def test_cli_info_lists_segments_and_rois(capsys):
    from medseg.cli import main

    assert main(["info", str(shared(DCMQI / "partial_overlaps.dcm"))]) == 0
    out = capsys.readouterr().out
    for segment, name in ((1, "GREEN"), (2, "ORANGE"), (3, "PURPLE"), (4, "LIGHT_BLUE"),
                          (5, "DARK_BLUE")):  # voxel counts from dcmqi's own NRRD exports
        nrrd = {1: 1, 2: 2, 3: 3, 4: 1, 5: 1}[segment]
        count = int((read_volume(DCMQI / f"partial_overlaps-{nrrd}.nrrd").array == segment).sum())
        assert f"{segment:>3}  {name}" in out and f" {count}\n" in out
    series = pydicom.dcmread(DCMQI / "partial_overlaps.dcm").ReferencedSeriesSequence[0]
    assert str(series.SeriesInstanceUID) in out
    assert main(["info", str(MOCK / "invalid_reference_rt.dcm")]) == 0
    out = capsys.readouterr().out
    assert "RTSTRUCT, 4 ROIs" in out and out.count("ROI-") == 4


def test_manifest_case_with_an_rtstruct_label(tmp_path):
    from medseg.data.manifest import load_manifest, read_case, validate_manifest

    (tmp_path / "cases.csv").write_text(f"image,label\n{shared(MOCK)},{MOCK / 'rt.dcm'}\n")
    manifest = load_manifest(tmp_path / "cases.csv")
    image, label = read_case(manifest.cases[0])
    assert label.same_grid(image) and label.meta["label_names"] == {1: "ROI-1"}
    assert np.array_equal(label.array, read_labels(MOCK / "rt.dcm", reference=MOCK).array)
    assert validate_manifest(manifest) == []


# -- label values survive the round trip --------------------------------------------------------
NON_CONTIGUOUS = {1: "liver", 5: "spleen", 6: "kidney_left", 7: "kidney_right", 8: "aorta",
                  20: "tumour"}


def _non_contiguous_boxes(series: Volume) -> LabelMap:
    """Boxes with label values 1, 5, 6, 7, 8, 20 on two slices of ``series``, one with a hole."""
    array = np.zeros(series.spatial_shape, dtype=np.uint8)
    for i, value in enumerate(NON_CONTIGUOUS):
        array[40 + 60 * i: 90 + 60 * i, 100:160 + 10 * i, i % 2] = value
    array[50:60, 110:120, 0] = 0  # a hole in label 1
    array[300, 200:260, 1] = 20  # a one-voxel-thin line
    return LabelMap(array, series.affine)


@pytest.mark.parametrize("fmt", ["seg", "rtstruct"])
def test_nifti_to_dicom_and_back_keeps_values_and_names(tmp_path, fmt):
    from medseg.cli import main

    series = read_volume(shared(MOCK))
    labels = _non_contiguous_boxes(series)
    write_volume(labels, tmp_path / "in.nii.gz")
    (tmp_path / "names.json").write_text(json.dumps(NON_CONTIGUOUS))
    dcm, back = tmp_path / f"{fmt}.dcm", tmp_path / "back.nii.gz"
    assert main(["convert", str(tmp_path / "in.nii.gz"), "--reference", str(MOCK), str(dcm),
                 "--dicom-format", fmt, "--labels", str(tmp_path / "names.json")]) == 0
    assert main(["convert", str(dcm), "--reference", str(MOCK), str(back)]) == 0
    assert np.array_equal(read_volume(back).array, labels.array)
    again = read_labels(dcm, reference=MOCK)
    assert np.array_equal(again.array, labels.array)
    assert again.meta["label_names"] == NON_CONTIGUOUS
    ds = pydicom.dcmread(dcm)  # what other readers see in the file
    if fmt == "rtstruct":
        assert [int(r.ROINumber) for r in ds.StructureSetROISequence] == list(NON_CONTIGUOUS)
        assert [str(r.ROIName) for r in ds.StructureSetROISequence] == list(
            NON_CONTIGUOUS.values())
    else:
        segments = hd.seg.segread(dcm).SegmentSequence
        assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3, 4, 5, 6]
        assert [str(s.SegmentLabel) for s in segments] == list(NON_CONTIGUOUS.values())
        assert [int(s.private_block(0x0071, "medseg")[0x01].value) for s in segments] == list(
            NON_CONTIGUOUS)
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(dcm) == []


def test_foreign_seg_without_stored_values_reads_segment_numbers(tmp_path):
    """A SEG whose segments carry no medseg value (another writer) gives Segment Numbers."""
    series = read_volume(shared(MOCK))
    labels = _non_contiguous_boxes(series)
    out = write_dicom_seg(labels, tmp_path / "seg.dcm",
                          DerivedSeries(series.meta["dicom_files"], NON_CONTIGUOUS))
    ds = pydicom.dcmread(out)
    for segment in ds.SegmentSequence:
        del segment[0x00710010]  # the private creator: the value is unclaimed
    ds.save_as(tmp_path / "foreign.dcm")
    back = read_labels(tmp_path / "foreign.dcm", reference=MOCK)
    ordinal = np.zeros(21, dtype=np.uint8)
    ordinal[list(NON_CONTIGUOUS)] = np.arange(1, 7)
    assert np.array_equal(back.array, ordinal[labels.array])
    assert back.meta["label_names"] == dict(zip(range(1, 7), NON_CONTIGUOUS.values()))


def test_rtstruct_with_repeated_roi_numbers_falls_back_to_positions(tmp_path, caplog):
    rt = pydicom.dcmread(shared(MOCK / "rt.dcm"))
    twin = copy.deepcopy(rt.StructureSetROISequence[0])
    twin.ROIName = "twin"  # the same ROI Number twice: the numbers cannot be label values
    rt.StructureSetROISequence.append(twin)
    rt.save_as(tmp_path / "twin.dcm")
    labels = read_labels(tmp_path / "twin.dcm", reference=MOCK, overlap="last")
    assert "not distinct" in caplog.text and "twin.dcm" in caplog.text
    assert labels.meta["label_names"] == {1: "ROI-1", 2: "twin"}
    assert set(np.unique(labels.array)) == {0, 2}


def test_read_dataset_names_the_file_in_one_line(tmp_path):
    from medseg.errors import ImageReadError
    from medseg.io.dicom.files import read_dataset

    (tmp_path / "junk.dcm").write_bytes(b"DICM" * 3)
    with pytest.raises(ImageReadError) as e:
        read_dataset(tmp_path / "junk.dcm", "RTSTRUCT")
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'junk.dcm'}: cannot read RTSTRUCT (")
    assert "\n" not in message
