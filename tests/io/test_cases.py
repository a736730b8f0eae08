"""medseg.io.cases: case names, image files by case, reading, label names."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import ConfigError, DataError, GeometryError, ImageReadError, UsageError
from medseg.io import SUPPORTED_EXTENSIONS, write_volume
from medseg.io.cases import (
    Case,
    case_name,
    find_case_file,
    images_by_case,
    label_names_from_mapping,
    read_case_image,
    read_label_names,
)
from medseg.volume import Volume


def _touch_images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), folder / name)
        paths.append(folder / name)
    return paths


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", SUPPORTED_EXTENSIONS)
def test_case_name_strips_every_extension(ext):
    assert case_name(Path("a") / f"liver_001{ext}") == "liver_001"
    assert case_name(f"liver_001{ext.upper()}") == "liver_001"  # extensions in any case
    assert case_name(f"liver_001_0000{ext}") == "liver_001_0000"
    assert case_name(f"liver_001_0000{ext}", strip_channel=True) == "liver_001"


def test_case_name_of_folders_and_other_names():
    assert SUPPORTED_EXTENSIONS == (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
    assert case_name(Path("series_folder")) == "series_folder"
    assert case_name(Path("series_0001"), strip_channel=True) == "series_0001"  # a folder
    assert case_name("scan.nii.gz.bak") == "scan.nii.gz.bak"
    assert case_name("ct_12.nii.gz", strip_channel=True) == "ct_12"  # 2 digits: not a channel


def test_images_by_case_finds_every_format_and_names_duplicates(tmp_path):
    vol = Volume(np.zeros((3, 3, 3), np.uint8), np.eye(4))
    for name in ("a.nhdr", "b.mhd", "c.nii.gz", "d.mha"):
        write_volume(vol, tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    found = images_by_case(tmp_path)
    assert {k: v.name for k, v in found.items()} == {
        "a": "a.nhdr", "b": "b.mhd", "c": "c.nii.gz", "d": "d.mha"}
    assert find_case_file(tmp_path, "b") == tmp_path / "b.mhd"
    write_volume(vol, tmp_path / "c.nrrd")
    with pytest.raises(DataError, match=r"two images for case 'c': c\.nii\.gz and c\.nrrd") as e:
        images_by_case(tmp_path)
    assert e.value.path == str(tmp_path)


def test_find_case_file_channel_zero_and_error_lists_tries(tmp_path):
    _touch_images(tmp_path, ["ct_7_0000.nii.gz", "ct_7_0001.nii.gz"])
    assert find_case_file(tmp_path, "ct_7") == tmp_path / "ct_7_0000.nii.gz"
    with pytest.raises(ImageReadError, match=r"no file for case 'gone' \(tried gone\.nii\.gz, "
                                             r"gone\.nii, gone\.nrrd, gone\.nhdr, gone\.mha, "
                                             r"gone\.mhd"):
        find_case_file(tmp_path, "gone")


# -- reading ------------------------------------------------------------------------------------
def test_read_case_image_concatenates_channels_and_checks_grids(tmp_path):
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    a = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(a, affine), tmp_path / "c_0000.nii.gz")
    nib.save(nib.Nifti1Image(a * 2, affine), tmp_path / "c_0001.nii.gz")
    case = Case("c", (tmp_path / "c_0000.nii.gz", tmp_path / "c_0001.nii.gz"))
    image = read_case_image(case)
    assert image.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(image.array, np.stack([a, a * 2]))
    np.testing.assert_allclose(image.affine, affine)
    single = read_case_image(Case("c", (tmp_path / "c_0000.nii.gz",)))
    assert single.shape == (1, 2, 3, 4)  # always channel first
    np.testing.assert_array_equal(single.array[0], a)
    with pytest.raises(UsageError, match="series= selects a DICOM series"):
        read_case_image(Case("c", (tmp_path / "c_0000.nii.gz",)), series="1.2.3")
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    nib.save(nib.Nifti1Image(a, shifted), tmp_path / "c_0001.nii.gz")
    with pytest.raises(GeometryError, match=r"c_0001\.nii\.gz: channel file is not on the grid "
                                            r"of c_0000\.nii\.gz"):
        read_case_image(case)


# -- label names --------------------------------------------------------------------------------
BACKGROUND = {0: "background", 1: "liver", 2: "spleen"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"1": "liver", "2": "spleen"}, BACKGROUND),
        ({"liver": 1, "spleen": 2}, BACKGROUND),
        ({"liver": "1", "spleen": "2"}, BACKGROUND),
        ({"name": "Task", "labels": {"0": "bg", "1": "liver", "2": "spleen"}},
         {0: "bg", 1: "liver", 2: "spleen"}),
        ({"labels": {"background": 0, "liver": 1, "spleen": 2}}, BACKGROUND),
        ({"labels": {"clear": 0, "liver": 1}}, {0: "clear", 1: "liver"}),
    ],
)
def test_label_files(tmp_path, content, expected):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content))
    assert read_label_names(path) == expected
    assert list(read_label_names(path)) == sorted(expected)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "labels file is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("{}", "expected a JSON object"),
        ('{"labels": {"background": 0, "liver": [1, 2]}}', "'liver'.*region.*not supported"),
        ('{"1": "liver", "-2": "spleen"}', "entry '-2': label value -2 is negative"),
        ('{"liver": -1}', "entry 'liver': label value -1 is negative"),
        ('{"liver": 1.5}', "entry 'liver': 1.5 is neither"),
        ('{"liver": true}', "entry 'liver': True is neither"),
        ('{"liver": 1, "spleen": 1}', "entry 'spleen': label 1 is already named 'liver'"),
    ],
)
def test_bad_label_files_name_file_and_entry(tmp_path, text, match):
    path = tmp_path / "labels.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        read_label_names(path)
    assert info.value.path == str(path)


def test_missing_label_file_is_a_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="labels file does not exist") as info:
        read_label_names(tmp_path / "gone.json")
    assert info.value.path == str(tmp_path / "gone.json")


def test_mapping_with_int_keys():
    assert label_names_from_mapping({2: "spleen", 1: "liver"}) == BACKGROUND
    assert label_names_from_mapping({1: "7"}) == {0: "background", 1: "7"}  # int key: the label
