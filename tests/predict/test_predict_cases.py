"""Case listing, output naming and torchrun sharding of ``medseg predict``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.inference.batch import (
    PredictCase,
    case_name,
    list_cases,
    outputs_for,
    shard_cases,
)
from medseg.errors import ConfigError, DataError, ImageReadError, UsageError


def _touch_images(folder: Path, names: list[str]) -> list[Path]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), folder / name)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7, 9])
def test_shard_every_case_exactly_once(world_size):
    cases = [PredictCase(f"c{i}", (Path(f"c{i}.nii.gz"),)) for i in range(7)]
    shards = [shard_cases(cases, rank, world_size) for rank in range(world_size)]
    flat = [c.name for shard in shards for c in shard]
    assert sorted(flat) == sorted(c.name for c in cases)
    assert len(flat) == len(set(flat)) == 7
    for rank, shard in enumerate(shards):  # case i -> rank i % world_size
        assert [int(c.name[1:]) % world_size for c in shard] == [rank] * len(shard)


def test_case_name():
    assert case_name(Path("a/liver_001.nii.gz")) == "liver_001"
    assert case_name(Path("b.mha")) == "b"
    assert case_name(Path("series_folder")) == "series_folder"


def test_list_single_file_and_folder(tmp_path):
    paths = _touch_images(tmp_path / "imgs", ["b.nii.gz", "a.nii"])
    (tmp_path / "imgs" / "c.nrrd.txt").write_text("not an image")
    (tmp_path / "imgs" / ".a.nii.gz.tmp.nii.gz").write_bytes(b"")  # hidden temp: ignored
    assert list_cases(paths[0]) == [PredictCase("b", (paths[0],))]
    cases = list_cases(tmp_path / "imgs")
    assert [c.name for c in cases] == ["a", "b"]


def test_list_dicom_folder_and_folder_of_series(tmp_path, ct_dicom):
    (cases,) = [list_cases(ct_dicom)]
    assert cases == [PredictCase("ct_dicom", (ct_dicom,))] and cases[0].is_dicom
    parent = tmp_path / "series"
    parent.mkdir()
    (parent / "s1").symlink_to(ct_dicom)
    (parent / "s2").symlink_to(ct_dicom)
    assert [c.name for c in list_cases(parent)] == ["s1", "s2"]


def test_list_msd_manifest_test_then_training(tmp_path):
    _touch_images(tmp_path / "imagesTs", ["t1.nii.gz", "t2.nii.gz"])
    _touch_images(tmp_path / "imagesTr", ["r1.nii.gz"])
    _touch_images(tmp_path / "labelsTr", ["r1.nii.gz"])
    doc = {"labels": {"0": "background", "1": "liver"},
           "training": [{"image": "./imagesTr/r1.nii.gz", "label": "./labelsTr/r1.nii.gz"}],
           "test": ["./imagesTs/t1.nii.gz", "./imagesTs/t2.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    cases = list_cases(tmp_path / "dataset.json")
    assert [c.name for c in cases] == ["t1", "t2"]
    assert cases[0].images == ((tmp_path / "imagesTs" / "t1.nii.gz").resolve(),)
    del doc["test"]
    (tmp_path / "train_only.json").write_text(json.dumps(doc))
    assert [c.name for c in list_cases(tmp_path / "train_only.json")] == ["r1"]


def test_list_csv_manifest(tmp_path):
    _touch_images(tmp_path / "x", ["p.nii.gz", "q.nii.gz"])
    (tmp_path / "m.csv").write_text("image,split\nx/p.nii.gz,test\nx/q.nii.gz,test\n")
    assert [c.name for c in list_cases(tmp_path / "m.csv")] == ["p", "q"]
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
    with pytest.raises(DataError, match="case name 'a'"):
        list_cases(tmp_path / "dup")
    _touch_images(tmp_path / "m", ["p.nii.gz"])
    (tmp_path / "m.csv").write_text("image,split\nm/p.nii.gz,test\nm/missing.nii.gz,test\n")
    with pytest.raises(DataError, match="m.csv: case 'missing'"):
        list_cases(tmp_path / "m.csv")


def test_outputs_for(tmp_path):
    case = PredictCase("liver_7", (tmp_path / "liver_7.nii.gz",))
    folder = outputs_for(case, tmp_path / "out", file_mode=False)
    assert folder.prediction == tmp_path / "out" / "liver_7.nii.gz"
    assert folder.probabilities == tmp_path / "out" / "liver_7_probabilities.nii.gz"
    assert folder.preview == tmp_path / "out" / "liver_7_preview.png"
    single = outputs_for(case, tmp_path / "seg.dcm", file_mode=True)
    assert single.prediction == tmp_path / "seg.dcm"
    assert single.probabilities == tmp_path / "seg_probabilities.nii.gz"
