"""RTSTRUCT writing: contours on the right slices, in LPS, read back to the same labels.

References are independent of medseg's geometry: slice positions and normals
come from the source slices' DICOM tags read with pydicom, centroids from the
label map's affine (RAS -> LPS by negating x and y), and the validator is
dicom3tools' ``dciodvfy``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pydicom
import pytest
from dicom_label_helpers import (
    SAMPLES,
    TOTALSEG,
    copy_with_instance_uids,
    dciodvfy_errors,
    dice,
    labels_on_series,
    shared,
)

import medseg.io.dicom.rtstruct as rtstruct
from medseg.errors import DataError
from medseg.io import read_volume
from medseg.io.dicom.derived import DerivedSeries
from medseg.io.dicom.rtstruct import roi_colour, write_rtstruct
from medseg.io.labels import read_labels
from medseg.volume import LabelMap


@pytest.fixture(scope="module")
def series():
    return read_volume(shared(TOTALSEG / "ct_dicom"))


@pytest.fixture(scope="module")
def labels(series):
    return labels_on_series(read_volume(shared(TOTALSEG / "seg.nii.gz")), series)


@pytest.fixture(scope="module")
def names():
    raw = json.loads(shared(TOTALSEG / "labels.json").read_text())
    return {int(k): v for k, v in raw.items()}


@pytest.fixture(scope="module")
def rt_file(tmp_path_factory, series, labels, names):
    out = tmp_path_factory.mktemp("rt") / "rt.dcm"
    return write_rtstruct(labels, out, DerivedSeries(series.meta["dicom_files"], names))


def test_round_trip_is_exact_with_the_label_values(rt_file, series, labels, names):
    """medseg reads its own RTSTRUCT back voxel for voxel, TotalSegmentator's non-contiguous
    label values (ROI Numbers) and names included."""
    back = read_labels(rt_file, reference=TOTALSEG / "ct_dicom")
    assert back.shape == series.shape and np.allclose(back.affine, series.affine)
    present = [int(v) for v in np.unique(labels.array) if v > 0]
    assert present != list(range(1, len(present) + 1))  # gaps, or the test proves nothing
    assert back.meta["label_names"] == {v: names[v] for v in present}
    for value in present:
        assert dice(labels.array == value, back.array == value) == 1.0, names[value]
    assert np.array_equal(back.array, labels.array)
    ds = pydicom.dcmread(rt_file)
    assert [int(r.ROINumber) for r in ds.StructureSetROISequence] == present


def test_rt_utils_reads_every_structure_back(tmp_path, rt_file, series, labels, names):
    """rt-utils (TotalSegmentator's RTSTRUCT library: vertices rounded to pixels, then
    cv2.fillPoly) rasterises medseg's contours to the very voxels they came from; with
    outlines midway between pixel centres it read the 1-5 mL structures at Dice 0.83-0.93."""
    rt_utils = pytest.importorskip("rt_utils", reason="rt-utils (the oracle) is not installed")
    folder = copy_with_instance_uids(TOTALSEG / "ct_dicom", tmp_path / "series")
    rt = rt_utils.RTStructBuilder.create_from(str(folder), str(rt_file))
    values, counts = np.unique(labels.array, return_counts=True)
    sizes_ml = {int(v): n * series.voxel_volume_ml for v, n in zip(values, counts) if v > 0}
    assert sum(ml >= 1.0 for ml in sizes_ml.values()) >= 30
    assert min(ml for ml in sizes_ml.values() if ml >= 1.0) < 1.5  # the small ones are there
    scores = {}
    for value, ml in sizes_ml.items():
        # rt-utils' masks are (row, column, slice) with slices along the normal: (y, x, z)
        mask = rt.get_roi_mask_by_name(names[value]).transpose(1, 0, 2)
        scores[names[value]] = dice(mask, labels.array == value)
        if ml >= 1.0:
            assert scores[names[value]] >= 0.95, (names[value], ml, scores[names[value]])
    assert all(score == 1.0 for score in scores.values()), scores


def _sop_uid(ds) -> str:
    """SOP Instance UID, from the file meta where the (anonymised) dataset has it blank."""
    return str(ds.get("SOPInstanceUID", "") or ds.file_meta.MediaStorageSOPInstanceUID)


def _slice_geometry(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    return np.asarray(ds.ImagePositionPatient, dtype=float), np.cross(iop[:3], iop[3:])


def test_contours_lie_on_their_slices(rt_file, series):
    geometry = {_sop_uid(pydicom.dcmread(f, stop_before_pixels=True)): _slice_geometry(f)
                for f in series.meta["dicom_files"]}
    ds = pydicom.dcmread(rt_file)
    count = 0
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            ipp, normal = geometry[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert np.abs((points - ipp) @ normal).max() < 1e-3
            count += 1
    assert count > 100


def _roi_centroids_lps(ds) -> dict[str, np.ndarray]:
    """Area centroid of each ROI's contours (axial slices: shoelace in x, y; holes subtract)."""
    out = {}
    for item, roi in zip(ds.StructureSetROISequence, ds.ROIContourSequence):
        moments, area = np.zeros(3), 0.0
        for contour in roi.ContourSequence:
            p = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            x, y, xn, yn = p[:, 0], p[:, 1], np.roll(p[:, 0], -1), np.roll(p[:, 1], -1)
            cross = x * yn - xn * y
            a = cross.sum() / 2
            moments += [((x + xn) * cross).sum() / 6, ((y + yn) * cross).sum() / 6, a * p[0, 2]]
            area += a
        out[str(item.ROIName)] = moments / area
    return out


def centroid_mismatches(rt_path, labels: LabelMap, names) -> tuple[int, list[str]]:
    """(structures compared, names whose contour centroid is over 2 mm from the label
    centroid converted RAS -> LPS; outlines run through the boundary voxels' centres, so a
    thin structure's area centroid may sit about a pixel (1 mm) off its voxels'); only
    structures 10+ mm away from the image's middle lines and diagonals are compared, where a
    mirror or transpose moves them."""
    contours = _roi_centroids_lps(pydicom.dcmread(rt_path))
    middle = labels.affine[:3, :3] @ ((np.asarray(labels.spatial_shape) - 1) / 2)
    middle = (middle + labels.affine[:3, 3]) * [-1, -1, 1]
    compared, wrong = 0, []
    for value in np.unique(labels.array)[1:]:
        ijk = np.argwhere(labels.array == value).mean(axis=0)
        lps = (labels.affine[:3, :3] @ ijk + labels.affine[:3, 3]) * [-1, -1, 1]
        dx, dy = lps[:2] - middle[:2]
        if min(abs(dx), abs(dy), abs(abs(dx) - abs(dy)) / np.sqrt(2)) < 10:
            continue
        compared += 1
        if np.abs(contours[names[int(value)]] - lps).max() > 2.0:
            wrong.append(names[int(value)])
    return compared, wrong


def test_contours_are_in_lps(rt_file, labels, names):
    compared, wrong = centroid_mismatches(rt_file, labels, names)
    assert compared >= 5 and wrong == []


@pytest.mark.parametrize("fault", ["transposed", "mirrored"])
def test_centroid_check_catches_a_wrong_writer(tmp_path, monkeypatch, series, labels, names,
                                               fault):
    real = rtstruct.slice_contours

    def broken(mask):
        outlines = real(mask)
        if fault == "transposed":
            return [o[:, ::-1] for o in outlines]
        return [np.column_stack([o[:, 0], mask.shape[1] - 1 - o[:, 1]]) for o in outlines]

    monkeypatch.setattr(rtstruct, "slice_contours", broken)
    out = write_rtstruct(labels, tmp_path / "bad.dcm",
                         DerivedSeries(series.meta["dicom_files"], names))
    compared, wrong = centroid_mismatches(out, labels, names)
    assert len(wrong) >= compared // 2 > 0


def test_references_and_validator(rt_file, series, labels, names):
    ds = pydicom.dcmread(rt_file)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.meta["dicom_files"]]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and ds.Modality == "RTSTRUCT"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ContourImageSequence} == {
        _sop_uid(s) for s in sources}
    present = [int(v) for v in np.unique(labels.array) if v > 0]
    assert [r.ROIName for r in ds.StructureSetROISequence] == [names[v] for v in present]
    colours = {tuple(r.ROIDisplayColor) for r in ds.ROIContourSequence}
    assert len(colours) == len(present)
    assert dciodvfy_errors(rt_file) == []


def test_holes_are_inner_contours_and_empty_labels_warn(tmp_path, caplog):
    folder = shared(SAMPLES / "rt_utils" / "mock_data")
    series = read_volume(folder)
    array = np.zeros(series.spatial_shape, dtype=np.uint8)
    array[100:160, 200:260, 1] = 3
    array[120:140, 220:240, 1] = 0  # a hole
    labels = LabelMap(array, series.affine)
    with caplog.at_level(logging.WARNING):
        out = write_rtstruct(labels, tmp_path / "ring.dcm",
                             DerivedSeries(series.meta["dicom_files"], {3: "ring", 5: "absent"}))
    assert "5 (absent)" in caplog.text
    ds = pydicom.dcmread(out)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["ring"]
    assert len(ds.ROIContourSequence[0].ContourSequence) == 2  # outer outline + hole
    back = read_labels(out, reference=folder)
    assert np.array_equal(back.array, array)  # label value 3 stays 3 (ROI Number 3)
    assert int(ds.StructureSetROISequence[0].ROINumber) == 3
    assert dciodvfy_errors(out) == []


def test_oblique_series_keeps_its_geometry(tmp_path):
    folder = shared(SAMPLES / "rt_utils" / "oriented_data")
    series = read_volume(folder)
    array = np.zeros(series.spatial_shape, dtype=np.uint8)
    array[30:70, 10:35, :] = 1
    array[40:50, 15:20, 1] = 2
    labels = LabelMap(array, series.affine)
    out = write_rtstruct(labels, tmp_path / "oblique.dcm",
                         DerivedSeries(series.meta["dicom_files"], {1: "box", 2: "core"}))
    back = read_labels(out, reference=folder)
    assert np.allclose(back.affine, series.affine) and back.orientation == series.orientation
    assert np.array_equal(back.array, array)
    assert back.meta["label_names"] == {1: "box", 2: "core"}


def test_roi_colours_are_distinct():
    colours = [tuple(roi_colour(i)) for i in range(64)]
    assert len(set(colours)) == 64
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_refuses_a_map_without_foreground(tmp_path):
    folder = shared(SAMPLES / "rt_utils" / "mock_data")
    series = read_volume(folder)
    empty = LabelMap(np.zeros(series.spatial_shape, dtype=np.uint8), series.affine)
    with pytest.raises(DataError, match="no foreground"):
        write_rtstruct(empty, tmp_path / "e.dcm", DerivedSeries(series.meta["dicom_files"], {}))
    assert not (tmp_path / "e.dcm").exists()


def _centre_inside(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside an odd number of outlines (matplotlib's point-in-polygon)."""
    from matplotlib.path import Path as MplPath

    centres = np.argwhere(np.ones(shape, dtype=bool)).astype(float)
    out = np.zeros(shape, dtype=bool)
    for outline in outlines:
        out ^= MplPath(outline).contains_points(centres).reshape(shape)
    return out


def _fill_polygon(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """rt-utils' rasterisation: vertices rounded to pixel centres, then cv2.fillPoly."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV (rt-utils' rasteriser) is not installed")
    out = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(out, [np.around(o[:, ::-1]).astype(np.int32) for o in outlines], 1)
    return out.astype(bool)


def _shapes() -> dict[str, np.ndarray]:
    """Hand-made slices: a single pixel, thin lines, an L, holes, diagonal neighbours."""
    shapes = {name: np.zeros((12, 14), dtype=bool) for name in
              ("pixel", "row", "column", "diagonal", "L", "ring", "one-pixel hole", "slit")}
    shapes["pixel"][4, 6] = True
    shapes["row"][5, 2:11] = True
    shapes["column"][1:10, 7] = True
    for i in range(2, 9):
        shapes["diagonal"][i, i + 1] = True
    shapes["L"][2:10, 3:5] = True
    shapes["L"][8:10, 3:12] = True
    shapes["ring"][2:10, 2:12] = True
    shapes["ring"][4:8, 5:9] = False
    shapes["one-pixel hole"][3:8, 3:8] = True
    shapes["one-pixel hole"][5, 5] = False
    shapes["slit"][2:10, 2:12] = True
    shapes["slit"][6, 4:10] = False  # a one-pixel-thin hole
    return shapes


@pytest.mark.parametrize("name", sorted(_shapes()))
def test_both_kinds_of_readers_rasterise_the_outlines_back(name):
    mask = _shapes()[name]
    outlines = rtstruct.slice_contours(mask)
    assert np.array_equal(_centre_inside(outlines, mask.shape), mask)
    assert np.array_equal(_fill_polygon(outlines, mask.shape), mask)


def test_outlines_run_a_tenth_of_a_pixel_outside_the_boundary_centres():
    mask = np.zeros((6, 7), dtype=bool)
    mask[2, 3] = True  # one pixel: a diamond of radius 0.1 around its centre
    (outline,) = rtstruct.slice_contours(mask)
    expected = {(1.9, 3.0), (2.0, 2.9), (2.1, 3.0), (2.0, 3.1)}
    assert {tuple(np.round(p, 6)) for p in outline} == expected
    mask[2, 3:6] = True  # a row of three: two straight sides 0.1 above and below the centres
    (outline,) = rtstruct.slice_contours(mask)
    assert np.allclose(sorted(map(tuple, np.round(outline, 6))), sorted(
        [(1.9, 3.0), (1.9, 5.0), (2.0, 5.1), (2.1, 5.0), (2.1, 3.0), (2.0, 2.9)]))
