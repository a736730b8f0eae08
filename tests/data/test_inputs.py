"""medseg.data.inputs: the cases an input path (file, DICOM, folder, manifest) describes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.inputs import list_cases
from medseg.errors import ConfigError, DataError, ImageReadError
from medseg.io.cases import Case

# <repo>/../shared/data/totalsegmentator/ct_dicom: the real CT series (the tests skip without it).
CT_DICOM = Path(__file__).resolve().parents[2] / "../shared/data/totalsegmentator/ct_dicom"


@pytest.fixture(scope="module")
def ct_dicom() -> Path:
    if not CT_DICOM.is_dir():
        pytest.skip(f"real test data not found at {CT_DICOM.resolve()} (../shared is absent)")
    return CT_DICOM.resolve()


def _touch_images(folder: Path, names: list[str]) -> list[Path]:
    """Empty 2 x 2 x 2 NIfTI files ``names`` in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), folder / name)
    return [folder / name for name in names]


def test_list_single_file_and_folder(tmp_path):
    paths = _touch_images(tmp_path / "imgs", ["b.nii.gz", "a.nii"])
    (tmp_path / "imgs" / "c.nrrd.txt").write_text("not an image")
    (tmp_path / "imgs" / ".a.nii.gz.tmp.nii.gz").write_bytes(b"")  # hidden temp: ignored
    assert list_cases(paths[0]) == [Case("b", (paths[0],), None, "test")]
    cases = list_cases(tmp_path / "imgs")
    assert [c.case_id for c in cases] == ["a", "b"]


def test_list_dicom_folder_and_folder_of_series(tmp_path, ct_dicom):
    (cases,) = [list_cases(ct_dicom)]
    assert cases == [Case("ct_dicom", (ct_dicom,), split="test")] and cases[0].is_dicom
    parent = tmp_path / "series"
    parent.mkdir()
    (parent / "s1").symlink_to(ct_dicom)
    (parent / "s2").symlink_to(ct_dicom)
    assert [c.case_id for c in list_cases(parent)] == ["s1", "s2"]


def test_list_msd_manifest_test_then_training(tmp_path):
    _touch_images(tmp_path / "imagesTs", ["t1.nii.gz", "t2.nii.gz"])
    _touch_images(tmp_path / "imagesTr", ["r1.nii.gz"])
    _touch_images(tmp_path / "labelsTr", ["r1.nii.gz"])
    doc = {"labels": {"0": "background", "1": "liver"},
           "training": [{"image": "./imagesTr/r1.nii.gz", "label": "./labelsTr/r1.nii.gz"}],
           "test": ["./imagesTs/t1.nii.gz", "./imagesTs/t2.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    cases = list_cases(tmp_path / "dataset.json")
    assert [c.case_id for c in cases] == ["t1", "t2"]
    assert cases[0].images == ((tmp_path / "imagesTs" / "t1.nii.gz").resolve(),)
    del doc["test"]
    (tmp_path / "train_only.json").write_text(json.dumps(doc))
    assert [c.case_id for c in list_cases(tmp_path / "train_only.json")] == ["r1"]


def test_list_csv_manifest(tmp_path):
    _touch_images(tmp_path / "x", ["p.nii.gz", "q.nii.gz"])
    (tmp_path / "m.csv").write_text("image,split\nx/p.nii.gz,test\nx/q.nii.gz,test\n")
    assert [c.case_id for c in list_cases(tmp_path / "m.csv")] == ["p", "q"]
    (tmp_path / "bad.csv").write_text("img\nx/p.nii.gz\n")
    with pytest.raises(ConfigError, match="bad.csv.*image"):
        list_cases(tmp_path / "bad.csv")


def test_list_errors(tmp_path):
    with pytest.raises(ImageReadError, match="nothing_here"):
        list_cases(tmp_path / "nothing_here")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: not an image"):
        list_cases(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: folder holds no image"):
        list_cases(tmp_path / "empty")
    _touch_images(tmp_path / "dup", ["a.nii", "a.nii.gz"])
    with pytest.raises(DataError, match="case 'a'"):
        list_cases(tmp_path / "dup")
    _touch_images(tmp_path / "m", ["p.nii.gz"])
    (tmp_path / "m.csv").write_text("image,split\nm/p.nii.gz,test\nm/missing.nii.gz,test\n")
    with pytest.raises(DataError, match="m.csv: case 'missing'"):
        list_cases(tmp_path / "m.csv")
