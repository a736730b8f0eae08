"""Odd and corrupt inputs through ``medseg info`` / ``convert``: one stderr line naming the file.

Each NIfTI case patches one header field of a valid file at its NIfTI-1 byte
offset (dim 40, datatype 70, bitpix 72, pixdim 76, vox_offset 108, qform_code 252,
sform_code 254, quatern_b 256, srow_x 280; little endian).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli import main
from medseg.errors import GeometryError, ImageReadError
from medseg.io import read_volume

SHAPE = (6, 7, 8)


def _cli_error(capsys, args: list[str], name: str) -> str:
    """Run the CLI, expect exit 1 and exactly one stderr line naming ``name``; return it."""
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("medseg: error: ") and name in err[0], err
    assert "internal error" not in err[0]
    return err[0]


@pytest.fixture
def nifti_bytes(tmp_path) -> bytes:
    """A valid uncompressed int16 NIfTI-1 of SHAPE (352-byte header, then 672 voxels)."""
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = tmp_path / "valid.nii"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return path.read_bytes()


def _patched(raw: bytes, folder: Path, name: str, fields: dict[int, tuple[str, object]]) -> Path:
    """Write ``raw`` with each {offset: (struct format, value)} packed in; gzip for .gz names."""
    block = bytearray(raw)
    for offset, (fmt, value) in fields.items():
        struct.pack_into("<" + fmt, block, offset, value)
    path = folder / name
    path.write_bytes(gzip.compress(bytes(block)) if name.endswith(".gz") else bytes(block))
    return path


QFORM_ONLY = {254: ("h", 0), 252: ("h", 1)}  # the affine comes from the qform and pixdim
HEADER_CASES = [
    ("dim0.nii", {40: ("h", 8)}, "dim[0] = 8 is outside 1..7"),
    ("negdim.nii.gz", {42: ("h", -6)}, "dim[1] = -6: every axis needs at least one voxel"),
    ("zerodim.nii", {44: ("h", 0)}, "dim[2] = 0"),
    ("dtype.nii", {70: ("h", 999)}, "datatype 999 is not a NIfTI data type code"),
    ("bitpix.nii.gz", {72: ("h", 8)},
     "bitpix 8 does not match datatype 4 (int16, 16 bits per voxel)"),
    ("offset_big.nii", {108: ("f", 1e6)},
     "truncated file: 1024 bytes, but vox_offset 1e+06 plus the voxels"),
    ("offset_big.nii.gz", {108: ("f", 1e6)}, "cannot read as NIfTI (Expected 672 bytes, got 0"),
    ("offset_neg.nii", {108: ("f", -100.0)}, "vox_offset -100 lies inside the header"),
    ("offset_zero.nii", {108: ("f", 0.0)}, "vox_offset 0 lies inside the header"),
    ("offset_nan.nii.gz", {108: ("f", float("nan"))}, "vox_offset nan is not a byte offset"),
    ("offset_inf.nii", {108: ("f", float("inf"))}, "vox_offset inf is not a byte offset"),
    ("magic.nii", {344: ("4s", b"xx\0\0")}, "magic b'xx' is not b'n+1'"),
    ("sform_code.nii", {254: ("h", 9)}, "sform_code 9 is not a NIfTI xform code"),
    ("pixdim_zero.nii", {**QFORM_ONLY, 80: ("f", 0.0)},
     "pixdim[1:4] = (0, 1, 2) must be positive voxel sizes in mm (the qform (qform_code 1)"),
    ("pixdim_neg.nii.gz", {**QFORM_ONLY, 84: ("f", -1.0)}, "pixdim[1:4] = (1, -1, 2)"),
    ("pixdim_nan.nii", {254: ("h", 0), 88: ("f", float("nan"))},
     "pixdim[1:4] = (1, 1, nan) must be positive voxel sizes in mm (the pixdim fallback"),
    ("sform_nan.nii", {280: ("f", float("nan"))},
     "the sform (sform_code 2) holds NaN or inf: no voxel-to-world affine"),
    ("qform_nan.nii.gz", {**QFORM_ONLY, 256: ("f", float("nan"))},
     "the qform (qform_code 1) with pixdim holds NaN or inf"),
    ("sform_zero.nii", {280: ("f", 0.0), 284: ("f", 0.0), 288: ("f", 0.0)},
     "affine is singular"),  # raised by Volume without a path; read_volume names the file
]


@pytest.mark.parametrize(("name", "fields", "expected"), HEADER_CASES,
                         ids=[case[0] for case in HEADER_CASES])
def test_nifti_header_out_of_range_is_one_line_naming_the_file(
    capsys, tmp_path, nifti_bytes, name, fields, expected
):
    path = _patched(nifti_bytes, tmp_path, name, fields)
    line = _cli_error(capsys, ["info", str(path)], name)
    assert f"{path}: " in line and expected in line


def test_header_errors_come_before_any_voxel_is_read(tmp_path, nifti_bytes):
    path = _patched(nifti_bytes, tmp_path, "dim0.nii", {40: ("h", 8)})
    with pytest.raises(ImageReadError) as exc:
        read_volume(path)
    assert exc.value.path == str(path)
    path = _patched(nifti_bytes, tmp_path, "sform_nan.nii", {280: ("f", float("nan"))})
    with pytest.raises(GeometryError) as geo:
        read_volume(path)
    assert geo.value.path == str(path)


def test_negative_pixdim_is_harmless_when_the_sform_places_the_voxels(
    caplog, tmp_path, nifti_bytes
):
    """nibabel takes |pixdim|, the sform gives the affine: read, with a warning naming the file."""
    path = _patched(nifti_bytes, tmp_path, "flipped_pixdim.nii", {80: ("f", -1.0)})
    volume = read_volume(path)
    assert np.array_equal(volume.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    expected = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    assert np.array_equal(volume.array, expected)
    assert any(str(path) in r.getMessage() and "pixdim" in r.getMessage() for r in caplog.records)


def test_truncated_header_in_nii_gz(capsys, tmp_path, nifti_bytes):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes)[:60])
    assert "truncated file" in _cli_error(capsys, ["info", str(path)], "cut.nii.gz")


def test_header_shorter_than_348_bytes(capsys, tmp_path, nifti_bytes):
    path = tmp_path / "stub.nii"
    path.write_bytes(nifti_bytes[:200])
    line = _cli_error(capsys, ["convert", str(path), str(tmp_path / "out.nii.gz")], "stub.nii")
    assert "truncated file: the header has 200 of 348 bytes" in line
    assert not (tmp_path / "out.nii.gz").exists()


def _rt_dose(path: Path, pixels: bool) -> None:
    """An RT Dose object (3 frames of 4 x 5 uint32 dose), with or without its pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.tag import Tag
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "RTDOSE", "phantom"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if pixels:
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.GridFrameOffsetVector = [2, 2], [0, 3, 6]
        ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
        ds.NumberOfFrames, ds.Rows, ds.Columns = 3, 4, 5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
        ds.DoseGridScaling, ds.DoseUnits, ds.DoseType = 0.001, "GY", "PHYSICAL"
        ds.PixelData = np.arange(60, dtype=np.uint32).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("pixels", [True, False])
def test_folder_with_only_an_rt_dose(capsys, tmp_path, pixels):
    folder = tmp_path / "dose"
    folder.mkdir()
    _rt_dose(folder / "RD.dcm", pixels=pixels)
    line = _cli_error(capsys, ["info", str(folder)], str(folder))
    assert "holds only an RT Dose (1.2.840.10008.5.1.4.1.1.481.2: RD.dcm), no image series" in line


def test_folder_with_a_malformed_dcm(capsys, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff\x13garbage" * 50)
    line = _cli_error(capsys, ["convert", str(folder), str(tmp_path / "out.nii.gz")], "broken")
    assert "no DICOM image files found" in line and "bad.dcm: not a readable DICOM" in line


def test_series_with_an_unreadable_slice_names_it(capsys, dicom_copy):
    victim = sorted(dicom_copy.glob("*.dcm"))[5]
    victim.write_bytes(victim.read_bytes()[:1000])  # cut inside the header: GDCM skips it
    line = _cli_error(capsys, ["info", str(dicom_copy)], str(dicom_copy))
    assert "uneven slice spacing" in line
    assert f"1 file(s) here are in no series (unreadable slices?): {victim.name}" in line


@pytest.mark.parametrize(("name", "fields", "expected"), [
    ("sizes.nrrd", {"sizes": "4 4 x"}, "_nrrdSizeCheck: axis 2 size is zero"),
    ("type.nrrd", {"type": "quaternion"}, 'couldn\'t parse type "quaternion"'),
    ("dimension.nrrd", {"dimension": "-3"}, "dimension 4294967293 is outside valid range"),
    ("spacing.nrrd", {"space directions": "(0,0,0) (0,1,0) (0,0,1)"},
     "Zero-valued spacing is not supported"),
])
def test_nrrd_with_a_bad_header_field(capsys, tmp_path, name, fields, expected):
    header = {"type": "short", "dimension": "3", "space": "left-posterior-superior",
              "sizes": "4 4 4", "space directions": "(1,0,0) (0,1,0) (0,0,1)",
              "endian": "little", "encoding": "raw", "space origin": "(0,0,0)", **fields}
    text = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in header.items()) + "\n"
    path = tmp_path / name
    path.write_bytes(text.encode() + bytes(128))
    line = _cli_error(capsys, ["info", str(path)], name)
    assert f"{path}: cannot read image (" in line and expected in line


def test_a_malformed_header_extension_does_not_stop_reading(tmp_path, nifti_bytes):
    """medseg keeps no extensions: one claiming 1000 bytes in a 16-byte slot is skipped."""
    extension = struct.pack("<ii", 1000, 6) + b"comment!"
    raw = bytearray(nifti_bytes[:352] + extension + nifti_bytes[352:])
    struct.pack_into("<4B", raw, 348, 1, 0, 0, 0)  # "extensions follow"
    struct.pack_into("<f", raw, 108, 368.0)  # vox_offset past the extension
    path = tmp_path / "extension.nii"
    path.write_bytes(bytes(raw))
    expected = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    assert np.array_equal(read_volume(path).array, expected)
