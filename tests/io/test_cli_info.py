"""``medseg info`` output against hand calculations and nibabel."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np

from medseg.cli import main
from medseg.io import SUPPORTED_EXTENSIONS, is_image_path, write_volume
from medseg.volume import Volume, affine_from


def test_info_label_map_counts_and_millilitres(tmp_path, capsys):
    labels = np.zeros((10, 8, 5), np.uint8)
    labels[:2] = 1  # 2*8*5 = 80 voxels
    labels[9, 0, 0] = 7  # 1 voxel
    affine = affine_from((2.0, 2.5, 4.0), "LPS", origin_mm=(10.0, -20.0, 30.5))  # 20 mm^3
    path = write_volume(Volume(labels, affine), tmp_path / "lab.nii.gz")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "10 x 8 x 5" in out and "uint8" in out and "LPS" in out
    assert "2 x 2.5 x 4 mm" in out
    assert "(10, -20, 30.5) mm" in out
    assert "0.02 mL" in out
    rows = {int(m[0]): (int(m[1]), float(m[2]))
            for m in re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)$", out, flags=re.M)}
    assert rows == {0: (319, 6.38), 1: (80, 1.6), 7: (1, 0.02)}
    assert "min 0, max 7" in out


def test_info_real_ct_intensities(ct_nifti, capsys):
    data = np.asanyarray(nib.load(ct_nifti).dataobj)
    assert main(["info", str(ct_nifti)]) == 0
    out = capsys.readouterr().out
    assert f"min {data.min()}, max {data.max()}, mean {data.mean():.6g}" in out
    assert "122 x 101 x 30" in out and "RAS" in out and "3 x 3 x 3 mm" in out
    assert "not a label map" in out  # a CT has thousands of distinct values


def test_info_dicom_folder(ct_dicom, capsys):
    assert main(["info", str(ct_dicom)]) == 0
    out = capsys.readouterr().out
    assert "512 x 512 x 20" in out and "20 DICOM files" in out
    assert "0.976562 x 0.976562 x 2 mm" in out


def test_is_image_path():
    assert SUPPORTED_EXTENSIONS == (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
    assert is_image_path("a/b/CASE_01.NII.GZ") and is_image_path("x.mha")
    assert not is_image_path("x.png") and not is_image_path("x.nii.gz.json")
    assert not is_image_path(".ct.nii.gz.abc.tmp.nii.gz")  # an atomic write's temp file
    assert not is_image_path(".nii.gz")
