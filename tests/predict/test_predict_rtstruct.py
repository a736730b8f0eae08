"""``medseg predict -o OUT.dcm --dicom-format rtstruct`` on the real CT series."""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from medseg.cli import main
from medseg.io import read_volume
from medseg.io.labels import read_labels

from .predict_helpers import threshold_labels


def test_predict_writes_an_rtstruct_that_reads_back(tmp_path, large_roi_ckpt, ct_dicom):
    # 6 neighbouring slices of the real series keep the test short: thresholding real CT
    # gives thousands of contours per slice
    series, rt_path = tmp_path / "series", tmp_path / "ct_rt.dcm"
    series.mkdir()
    for f in sorted(ct_dicom.glob("*.dcm"))[7:13]:
        shutil.copyfile(f, series / f.name)
    assert main(["predict", "-m", str(large_roi_ckpt), "-i", str(series), "-o", str(rt_path),
                 "--dicom-format", "rtstruct"]) == 0
    rt = pydicom.dcmread(rt_path)
    assert rt.Modality == "RTSTRUCT"
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["soft_tissue", "dense"]
    predicted = threshold_labels(read_volume(series).array)  # what the network predicts
    back = read_labels(rt_path, reference=series)
    assert back.meta["label_names"] == {1: "soft_tissue", 2: "dense"}
    for value in (1, 2):  # ROI n = n-th label present; both are present here
        a, b = predicted == value, back.array == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.97
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    report = subprocess.run(["dciodvfy", str(rt_path)], capture_output=True, text=True)
    lines = (report.stdout + report.stderr).splitlines()
    assert [line for line in lines if line.startswith("Error")] == []


def test_unknown_dicom_format_is_a_usage_error(tmp_path, large_roi_ckpt, ct_dicom, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "-m", str(large_roi_ckpt), "-i", str(ct_dicom), "-o",
              str(tmp_path / "x.dcm"), "--dicom-format", "rtstuct"])
    assert exc.value.code == 2 and "invalid choice: 'rtstuct'" in capsys.readouterr().err
