"""medseg.stats and ``medseg stats``: per-structure statistics against direct numpy per label."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from medseg.cli import main
from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.stats import STATS_COLUMNS, stats_of_files, structure_stats
from medseg.volume import Volume

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalsegmentator"
needs_data = pytest.mark.skipif(not (DATA / "seg.nii.gz").is_file(),
                                reason=f"real TotalSegmentator data absent at {DATA}")
INTENSITY = ("mean", "std", "median", "p5", "p95", "min", "max")


def _direct(image: np.ndarray, seg: np.ndarray, affine: np.ndarray, label: int) -> dict:
    """The statistics of one label the slow, obvious way: a mask per label."""
    mask = seg == label
    values = image[mask].astype(np.float64)
    ijk = np.argwhere(mask)
    p5, median, p95 = np.percentile(values, [5, 50, 95], method="linear")
    corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
    world = apply_affine(affine, (ijk[:, None, :] + corners[None]).reshape(-1, 3))
    return {
        "voxels": int(mask.sum()),
        "volume_ml": mask.sum() * abs(np.linalg.det(affine[:3, :3])) / 1000,
        "mean": values.mean(), "std": values.std(), "median": median, "p5": p5, "p95": p95,
        "min": values.min(), "max": values.max(),
        # the affine applied to every voxel centre, then averaged
        **dict(zip(("centroid_r_mm", "centroid_a_mm", "centroid_s_mm"),
                   apply_affine(affine, ijk).mean(axis=0))),
        # the spread of every corner of every voxel along each world axis
        **dict(zip(("extent_r_mm", "extent_a_mm", "extent_s_mm"), np.ptp(world, axis=0))),
    }


def _assert_rows_equal(rows, image, seg, affine):
    for row in rows:
        expected = _direct(image, seg, affine, row["label"])
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (row["label"], key)


@needs_data
def test_real_ct_equals_direct_numpy_per_label():
    ct_img, seg_img = nib.load(DATA / "ct.nii.gz"), nib.load(DATA / "seg.nii.gz")
    ct, seg = np.asarray(ct_img.dataobj), np.asarray(seg_img.dataobj)
    rows = stats_of_files(DATA / "ct.nii.gz", DATA / "seg.nii.gz")
    assert [r["label"] for r in rows] == [int(v) for v in np.unique(seg) if v]  # 41 labels
    assert len(rows) == 41 and {r["case"] for r in rows} == {"seg"}
    _assert_rows_equal(rows, ct, seg, seg_img.affine)
    liver = next(r for r in rows if r["label"] == 5)
    # hand check on the 3 mm isotropic RAS grid: voxel (i, j, k) is at 3 * (i, j, k) + origin
    ijk = np.argwhere(seg == 5).mean(axis=0)
    origin = seg_img.affine[:3, 3]
    assert liver["centroid_r_mm"] == pytest.approx(3 * ijk[0] + origin[0])
    assert liver["centroid_s_mm"] == pytest.approx(3 * ijk[2] + origin[2])
    span = np.ptp(np.argwhere(seg == 5), axis=0) + 1
    assert liver["extent_a_mm"] == pytest.approx(3 * span[1])
    assert liver["volume_ml"] == pytest.approx(38634 * 27 / 1000)


def test_oblique_lps_grid_and_memory_order():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 5, (9, 7, 6)).astype(np.uint16)
    seg[seg == 3] = 0  # label 3 absent
    image = rng.normal(0, 100, seg.shape).astype(np.float32)
    angle = np.deg2rad(20)
    rotation = np.array([[-np.cos(angle), -np.sin(angle), 0], [np.sin(angle), -np.cos(angle), 0],
                         [0, 0, 1]]) @ np.diag([0.8, 1.1, 2.5])  # LPS-like, rotated, anisotropic
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation, (12.0, -30.0, 7.5)
    for order in ("C", "F"):
        rows = structure_stats(Volume(np.asarray(image, order=order), affine),
                               Volume(np.asarray(seg, order=order), affine))
        assert [r["label"] for r in rows] == [1, 2, 4]
        _assert_rows_equal(rows, image, seg, affine)


def test_listed_labels_absent_labels_and_names(caplog):
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    seg[0, 0, 0] = 7  # not listed: left out (warned)
    volume = Volume(seg, np.diag([2.0, 2.0, 2.0, 1.0]))
    rows = structure_stats(volume.with_array(seg * 10.0), volume,
                           {0: "background", 1: "liver", 2: "spleen"}, case="c1")
    assert [(r["case"], r["label"], r["label_name"], r["voxels"]) for r in rows] == [
        ("c1", 1, "liver", 0), ("c1", 2, "spleen", 8)]
    assert rows[0]["volume_ml"] == 0.0 and all(math.isnan(rows[0][k]) for k in INTENSITY)
    assert (rows[1]["mean"], rows[1]["std"]) == (20.0, 0.0)
    assert rows[1]["volume_ml"] == pytest.approx(8 * 8 / 1000)
    assert (rows[1]["centroid_r_mm"], rows[1]["extent_s_mm"]) == (3.0, 4.0)
    assert list(rows[1]) == list(STATS_COLUMNS)
    assert "c1: labels [7] are not in the label list" in caplog.text


def _save(array, path, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture
def two_cases(tmp_path):
    """images/ (nnU-Net ``_0000`` names) and segs/ of two small cases on different grids."""
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir(), (tmp_path / "segs").mkdir()
    for case, spacing in (("a", 1.5), ("b", 0.7)):
        affine = np.diag([spacing, spacing, 2.0, 1.0])
        seg = rng.integers(0, 4, (10, 8, 6)).astype(np.uint8)
        image = rng.integers(-1000, 1000, seg.shape).astype(np.int16)
        _save(image, tmp_path / "images" / f"{case}_0000.nii.gz", affine)
        _save(seg, tmp_path / "segs" / f"{case}.nii.gz", affine)
    return tmp_path


def test_folders_give_one_table_with_a_case_column(two_cases):
    rows = stats_of_files(two_cases / "images", two_cases / "segs")
    assert [(r["case"], r["label"]) for r in rows] == [(c, k) for c in "ab" for k in (1, 2, 3)]
    for case in "ab":
        image = nib.load(two_cases / "images" / f"{case}_0000.nii.gz")
        seg = nib.load(two_cases / "segs" / f"{case}.nii.gz")
        _assert_rows_equal([r for r in rows if r["case"] == case], np.asarray(image.dataobj),
                           np.asarray(seg.dataobj), seg.affine)


def test_unpaired_folders_list_the_cases(two_cases):
    (two_cases / "segs" / "b.nii.gz").rename(two_cases / "segs" / "c.nii.gz")
    with pytest.raises(UsageError, match=r"unpaired cases: 1 without an image in .*: c; "
                                         r"1 without a segmentation in .*: b"):
        stats_of_files(two_cases / "images", two_cases / "segs")
    with pytest.raises(ImageReadError, match="images") as info:  # read as a DICOM folder
        stats_of_files(two_cases / "images", two_cases / "segs" / "a.nii.gz")
    assert info.value.path == str(two_cases / "images")
    with pytest.raises(ImageReadError, match="no such file") as info:
        stats_of_files(two_cases / "images" / "a_0000.nii.gz", two_cases / "nope.nii.gz")
    assert info.value.path == str(two_cases / "nope.nii.gz")


def test_different_grids_one_line_naming_both_files(two_cases, capsys):
    image = two_cases / "images" / "a_0000.nii.gz"
    seg = two_cases / "segs" / "b.nii.gz"  # same shape, other spacing
    with pytest.raises(GeometryError, match="affines differ by up to 0.8 mm"):
        stats_of_files(image, seg)
    assert main(["stats", str(image), str(seg)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(image) in err and str(seg) in err
    assert "different grids" in err


def test_empty_segmentation():
    seg = Volume(np.zeros((3, 3, 3), np.uint8), np.eye(4))
    image = seg.with_array(np.ones((1, 3, 3, 3)))  # one channel is accepted
    assert structure_stats(image, seg) == []
    (row,) = structure_stats(image, seg, [4])
    assert row["voxels"] == 0 and math.isnan(row["centroid_r_mm"])


def test_multichannel_image_is_refused():
    seg = Volume(np.ones((3, 3, 3), np.uint8), np.eye(4))
    with pytest.raises(GeometryError, match="image has 2 channels"):
        structure_stats(Volume(np.ones((2, 3, 3, 3)), np.eye(4)), seg)


def test_cli_writes_csv_or_prints_it(two_cases, capsys):
    labels = two_cases / "labels.json"
    labels.write_text(json.dumps({"1": "liver", "2": "spleen", "3": "kidney", "4": "aorta"}))
    out = two_cases / "new" / "stats.csv"
    args = ["stats", str(two_cases / "images"), str(two_cases / "segs"), "--labels", str(labels)]
    assert main([*args, "-o", str(out)]) == 0
    with out.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    rows = stats_of_files(two_cases / "images", two_cases / "segs", labels)
    assert [(r["case"], r["label_name"], r["voxels"]) for r in table] == [
        (r["case"], r["label_name"], str(r["voxels"])) for r in rows]
    assert table[3]["label_name"] == "aorta" and table[3]["mean"] == "nan"
    assert float(table[0]["p95"]) == rows[0]["p95"]
    capsys.readouterr()
    assert main(args) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out))) == table
