"""Bad input: one-line CLI error naming the file, non-zero exit, nothing left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import GeometryError, ImageReadError, ImageWriteError
from medseg.io import read_volume, write_volume
from medseg.volume import Volume


def _one_error_line(capsys, name: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("medseg: error: ")
    assert name in err[0]
    return err[0]


def _convert_fails(capsys, source, out_dir: Path, name: str, keep=frozenset()) -> str:
    out = out_dir / "out.nii.gz"
    code = main(["convert", str(source), str(out)])
    assert code != 0
    line = _one_error_line(capsys, name)
    assert sorted(p.name for p in out_dir.iterdir() if p.name not in keep) == []
    return line


@pytest.fixture
def out_dir(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def small_nifti(tmp_path) -> Path:
    data = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path


def test_missing_path(capsys, tmp_path, out_dir):
    line = _convert_fails(capsys, tmp_path / "nothere.nii.gz", out_dir, "nothere.nii.gz")
    assert "no such file" in line


def test_folder_without_dicom(capsys, tmp_path, out_dir):
    empty = tmp_path / "notdicom"
    empty.mkdir()
    (empty / "readme.txt").write_text("hello")
    line = _convert_fails(capsys, empty, out_dir, "notdicom")
    assert "no DICOM" in line


def test_truncated_nii_gz(capsys, small_nifti, tmp_path, out_dir):
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(small_nifti.read_bytes()[:-40])
    line = _convert_fails(capsys, bad, out_dir, "truncated.nii.gz")
    assert "truncated" in line
    with pytest.raises(ImageReadError):
        read_volume(bad)


def test_corrupt_nii_gz(capsys, small_nifti, tmp_path, out_dir):
    data = bytearray(small_nifti.read_bytes())
    data[200:260] = b"\x00" * 60  # damage the deflate stream
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(bytes(data))
    _convert_fails(capsys, bad, out_dir, "corrupt.nii.gz")


@pytest.mark.parametrize("name", ["notes.nii.gz", "notes.nii", "notes.nrrd", "notes.mha"])
def test_file_that_is_not_an_image(capsys, tmp_path, out_dir, name):
    bad = tmp_path / name
    bad.write_text("this is a text file, not an image\n" * 20)
    _convert_fails(capsys, bad, out_dir, name)
    with pytest.raises(ImageReadError):
        read_volume(bad)


def test_unknown_extension_lists_supported(capsys, tmp_path, out_dir):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG....")
    line = _convert_fails(capsys, bad, out_dir, "photo.png")
    assert ".nii.gz" in line and ".nrrd" in line and ".mha" in line


def test_unknown_output_extension(capsys, small_nifti, out_dir):
    assert main(["convert", str(small_nifti), str(out_dir / "out.png")]) != 0
    line = _one_error_line(capsys, "out.png")
    assert ".nii.gz" in line
    assert list(out_dir.iterdir()) == []


def test_2d_image(capsys, tmp_path, out_dir):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 12), np.float32), np.eye(4)), flat)
    line = _convert_fails(capsys, flat, out_dir, "flat.nii.gz")
    assert "is 2D" in line and "expected a 3D volume" in line


def test_2d_mha(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkInt16), str(path))
    with pytest.raises(GeometryError, match="is 2D"):
        read_volume(path)


def test_5d_image(capsys, tmp_path, out_dir):
    big = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 3), np.float32), np.eye(4)), big)
    line = _convert_fails(capsys, big, out_dir, "five.nii.gz")
    assert "is 5D" in line


@pytest.mark.parametrize("ext", [".nii.gz", ".mhd"])
def test_convert_creates_the_output_folder(small_nifti, tmp_path, ext):
    out = tmp_path / "new" / "dir" / f"out{ext}"
    assert main(["convert", str(small_nifti), str(out)]) == 0
    np.testing.assert_array_equal(read_volume(out).array, read_volume(small_nifti).array)


def test_output_folder_that_cannot_be_created(capsys, small_nifti, tmp_path):
    (tmp_path / "no").write_text("a file where a folder should be")
    out = tmp_path / "no" / "such" / "out.nii.gz"
    assert main(["convert", str(small_nifti), str(out)]) != 0
    line = _one_error_line(capsys, "out.nii.gz")
    assert "cannot create the output folder" in line and str(tmp_path / "no") in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write into read-only folders")
def test_read_only_output_folder(capsys, small_nifti, out_dir):
    out_dir.chmod(0o555)
    try:
        assert main(["convert", str(small_nifti), str(out_dir / "out.nii.gz")]) != 0
        assert "not writable" in _one_error_line(capsys, "out.nii.gz")
        assert list(out_dir.iterdir()) == []
    finally:
        out_dir.chmod(0o755)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mhd"])
def test_failure_while_writing_leaves_nothing(monkeypatch, out_dir, ext):
    """A write that fails half-way (here: the disk 'fills up') leaves no file behind."""
    import medseg.io.gz
    import medseg.io.sitk

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(medseg.io.gz._SequentialWriter, "write", broken)
    monkeypatch.setattr(medseg.io.sitk, "_itk_write", lambda *a: (_ for _ in ()).throw(
        RuntimeError("ITK ERROR: No space left on device")))
    volume = Volume(np.ones((4, 5, 6), np.int16), np.eye(4))
    if ext == ".nii":
        monkeypatch.setattr(nib.Nifti1Image, "to_filename", broken)
    (out_dir / f"keep{ext}").write_bytes(b"old")  # an existing file stays intact
    with pytest.raises(ImageWriteError, match="No space left") as exc:
        write_volume(volume, out_dir / f"keep{ext}")
    assert f"keep{ext}" in str(exc.value)
    assert sorted(p.name for p in out_dir.iterdir()) == [f"keep{ext}"]
    assert (out_dir / f"keep{ext}").read_bytes() == b"old"


def test_dicom_with_a_slice_removed(capsys, dicom_copy, out_dir):
    import pydicom

    files = sorted(dicom_copy.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                       .ImagePositionPatient[2]))
    files[7].unlink()
    line = _convert_fails(capsys, dicom_copy, out_dir, str(dicom_copy))
    assert "uneven slice spacing" in line and "missing" in line


def test_multi_series_folder_cli(capsys, dicom_copy, out_dir):
    import pydicom
    from pydicom.uid import generate_uid

    uid = generate_uid()
    for f in sorted(dicom_copy.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(dicom_copy / f"b_{f.name}")
    line = _convert_fails(capsys, dicom_copy, out_dir, str(dicom_copy))
    assert uid in line and "--series" in line


def test_info_missing_file(capsys, tmp_path):
    assert main(["info", str(tmp_path / "gone.mha")]) != 0
    _one_error_line(capsys, "gone.mha")


def test_copying_a_folder_is_not_writing_dicom(capsys, small_nifti, tmp_path):
    folder = tmp_path / "dicom_out"
    folder.mkdir()
    assert main(["convert", str(small_nifti), str(folder)]) != 0
    assert "writing DICOM" in _one_error_line(capsys, "dicom_out")
    shutil.rmtree(folder)


def test_unwritable_output_folder_simulated(capsys, small_nifti, out_dir, monkeypatch):
    """Same as above but runs as root too: the folder reports no write permission."""
    real_access = os.access

    def no_write(path, mode, **kwargs):
        if Path(path).resolve() == out_dir.resolve() and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", no_write)
    assert main(["convert", str(small_nifti), str(out_dir / "out.nii.gz")]) != 0
    assert "not writable" in _one_error_line(capsys, "out.nii.gz")
    assert list(out_dir.iterdir()) == []
