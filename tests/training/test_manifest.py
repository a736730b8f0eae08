"""Manifests: MSD / nnU-Net v2 dataset.json and CSV forms; `medseg validate` lists every problem."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.data.manifest import load_manifest, read_case, validate_manifest
from medseg.data.splits import split_train_val
from medseg.errors import ConfigError

from .training_helpers import write_case


def test_msd_dataset_json(msd_dataset):
    m = load_manifest(msd_dataset)
    assert m.label_names[0] == "background" and m.label_names[1] == "liver"
    assert m.num_classes == 6 and m.channel_names == ["CT"]
    assert [c.case_id for c in m.split("train")] == ["case0", "case1", "case2"]
    assert [c.case_id for c in m.split("val")] == ["case3"]
    case = m.cases[0]
    assert case.images == (msd_dataset.parent / "imagesTr" / "case0.nii.gz",)
    assert case.label == msd_dataset.parent / "labelsTr" / "case0.nii.gz"
    image, label = read_case(case)
    assert image.shape == (1, 24, 24, 16) and label.shape == (24, 24, 16)
    assert load_manifest(msd_dataset.parent).path == msd_dataset  # a folder works too


def test_nnunet_v2_labels_and_folder_layout(tmp_path):
    write_case(tmp_path, "case7", seed=7)
    (tmp_path / "imagesTr" / "case7.nii.gz").rename(tmp_path / "imagesTr" / "case7_0000.nii.gz")
    doc = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2,
           "kidney_left": 3, "kidney_right": 4, "aorta": 5}, "numTraining": 1,
           "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    m = load_manifest(tmp_path / "dataset.json")
    assert m.label_names == {0: "background", 1: "liver", 2: "spleen", 3: "kidney_left",
                             4: "kidney_right", 5: "aorta"}
    assert [(c.case_id, c.images[0].name, c.label.name) for c in m.cases] == [
        ("case7", "case7_0000.nii.gz", "case7.nii.gz")]
    assert validate_manifest(m) == []


def test_csv_manifest_and_split(tmp_path):
    for i in range(3):
        write_case(tmp_path, f"c{i}", seed=i)
    (tmp_path / "cases.csv").write_text(
        "image,label,split\n"
        "imagesTr/c0.nii.gz,labelsTr/c0.nii.gz,train\n"
        "imagesTr/c1.nii.gz,labelsTr/c1.nii.gz,val\n"
        "imagesTr/c2.nii.gz,,test\n")
    m = load_manifest(tmp_path / "cases.csv")
    assert [(c.case_id, c.split) for c in m.cases] == [("c0", "train"), ("c1", "val"), ("c2", "test")]
    assert m.cases[2].label is None
    train, val = split_train_val(m.cases, 0.5)
    assert [c.case_id for c in train] == ["c0"] and [c.case_id for c in val] == ["c1"]
    (tmp_path / "bad.csv").write_text("imgae,label\nx,y\n")
    with pytest.raises(ConfigError, match=r"bad.csv.*expected columns image,label"):
        load_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("image,label,split\nimagesTr/c0.nii.gz,labelsTr/c0.nii.gz,tran\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_manifest(tmp_path / "bad2.csv")


def test_split_train_val_holds_out_seeded_share(msd_dataset):
    m = load_manifest(msd_dataset)
    only_train = [c for c in m.cases if c.split == "train"]
    a = split_train_val(only_train, 0.34, seed=1)
    assert len(a[1]) == 1 and len(a[0]) == 2
    assert split_train_val(only_train, 0.34, seed=1) == a


def test_manifest_key_errors(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": [{"imgae": "x"}]}))
    with pytest.raises(ConfigError, match=r"d.json: training\[0\]"):
        load_manifest(tmp_path / "d.json")
    (tmp_path / "e.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ConfigError, match="lacks 'labels'"):
        load_manifest(tmp_path / "e.json")


def _broken_dataset(tmp_path):
    """Four cases: one good, one missing file, one off-grid label, one with unknown labels."""
    entries = []
    for i in range(4):
        write_case(tmp_path, f"case{i}", seed=i)
        entries.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    (tmp_path / "imagesTr" / "case1.nii.gz").unlink()
    lab = nib.load(tmp_path / "labelsTr" / "case2.nii.gz")
    shifted = lab.affine.copy()
    shifted[0, 3] += 7.0
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), shifted), tmp_path / "labelsTr" / "case2.nii.gz")
    lab3 = nib.load(tmp_path / "labelsTr" / "case3.nii.gz")
    data = np.asarray(lab3.dataobj).copy()
    data[0, 0, 0], data[1, 0, 0] = 9, 12
    nib.save(nib.Nifti1Image(data, lab3.affine), tmp_path / "labelsTr" / "case3.nii.gz")
    doc = {"labels": {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left",
                      "4": "kidney_right", "5": "aorta"}, "training": entries}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    return tmp_path / "dataset.json"


def test_validate_lists_every_problem_with_its_fix(tmp_path):
    problems = validate_manifest(load_manifest(_broken_dataset(tmp_path)))
    by_case = {p.case_id: p for p in problems}
    assert sorted(by_case) == ["case1", "case2", "case3"] and len(problems) == 3
    assert "does not exist" in by_case["case1"].message and "correct the path" in by_case["case1"].fix
    assert by_case["case1"].path.name == "case1.nii.gz"
    assert "differs from image grid" in by_case["case2"].message
    assert "origin (-131.0" in by_case["case2"].message  # the shifted origin is shown
    assert "nearest-neighbour" in by_case["case2"].fix
    assert "label values [9, 12]" in by_case["case3"].message
    assert "add them to 'labels'" in by_case["case3"].fix


def test_validate_cli_exit_codes(tmp_path, msd_dataset, capsys):
    assert main(["validate", str(msd_dataset)]) == 0
    assert "4 case(s) OK" in capsys.readouterr().out
    bad = tmp_path / "broken"
    bad.mkdir()
    assert main(["validate", str(_broken_dataset(bad))]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 4 and out[-1].endswith("3 problem(s) in 3 of 4 case(s)")
    assert all("-> fix:" in line for line in out[:3])
    assert main(["validate", str(tmp_path / "missing.json")]) == 1
    assert "manifest file does not exist" in capsys.readouterr().err
