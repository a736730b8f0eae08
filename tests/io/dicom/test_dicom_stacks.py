"""Several image stacks in one DICOM series or object, and Siemens mosaics; dcm2niix is the
reference (its own conversions in ../shared/data/dicom_qa_enh, or dcm2niix run on the input)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import ct_slice, save
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from stack_helpers import nibabel_mosaic, on_reference_grid, qa_enh, run_dcm2niix

from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.io import read_volume
from medseg.io.cases import Case, read_case_image
from medseg.io.dicom.image import list_stacks

PHILIPS = "In/Philips/IM_0027_fMAP.dcm"


# -- the Philips field map: one enhanced object, two stacks at the same 32 positions ----------
def test_philips_field_map_object_holds_magnitude_and_field_map():
    stacks = list_stacks(qa_enh(PHILIPS))
    assert [(s.index, s.label, len(s.members)) for s in stacks] == \
        [(1, "magnitude", 32), (2, "field_map", 32)]
    assert {"magnitude", "mag", "echo1"} <= set(stacks[0].names)
    assert {"field_map", "fieldmap", "real"} <= set(stacks[1].names)
    # each stack is one frame per position: frames 1..32 and 33..64 of the object
    assert stacks[0].frames == tuple(range(32)) and stacks[1].frames == tuple(range(32, 64))


def test_philips_magnitude_equals_dcm2niix_e1():
    """Same grid in physical space (after reorientation) and the same stored values: dcm2niix
    writes Philips' floating-point scale (stored / ScaleSlope), medseg the DICOM rescale
    (stored * RescaleSlope), so both are compared as stored integers."""
    volume = read_volume(qa_enh(PHILIPS), stack="magnitude")
    ref = nib.load(qa_enh("Ref/Philips_WIP_B0_NS_801_e1.nii"))
    first = pydicom.dcmread(qa_enh(PHILIPS), stop_before_pixels=True) \
        .PerFrameFunctionalGroupsSequence[0]
    slope = float(first.PixelValueTransformationSequence[0].RescaleSlope)
    sidecar = json.loads(qa_enh("Ref/Philips_WIP_B0_NS_801_e1.json").read_text())
    assert sidecar["PhilipsRescaleSlope"] == pytest.approx(slope, rel=1e-5)  # the same rescale
    ours = on_reference_grid(volume.affine, volume.array, ref)
    stored = np.rint(ours / slope).astype(np.int64)
    np.testing.assert_allclose(ours, stored * slope, atol=1e-6 * abs(slope))  # whole multiples
    np.testing.assert_array_equal(stored, np.asarray(ref.dataobj.get_unscaled(), np.int64))
    assert stored.max() > 1000  # a real image, not zeros


def test_philips_field_map_equals_dcm2niix_fieldmap_in_hz():
    volume = read_volume(qa_enh(PHILIPS), stack=2)
    ref = nib.load(qa_enh("Ref/Philips_WIP_B0_NS_801_e2_fieldmaphz.nii"))
    ours = on_reference_grid(volume.affine, volume.array, ref)
    # dcm2niix stores the rescale (0.2442 Hz per step, -500 Hz) as float32 scl_slope/scl_inter
    np.testing.assert_allclose(ours, ref.get_fdata(), atol=0.01)
    stored = np.rint((ours + 500.0) / 0.24420024420024).astype(np.int64)
    np.testing.assert_array_equal(stored, np.asarray(ref.dataobj.get_unscaled(), np.int64))
    assert ours.min() < -400 and ours.max() > 400


def test_several_stacks_and_none_chosen_is_one_line_naming_the_file():
    path = qa_enh(PHILIPS)
    with pytest.raises(ImageReadError) as info:
        read_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path}: holds 2 image stacks; pick one with --stack K")
    assert "1 magnitude (32 frames), 2 field_map (32 frames)" in message
    assert "\n" not in message


@pytest.mark.parametrize(("stack", "expected"), [
    (3, "--stack 3 is out of range: it holds 2 stack(s), numbered from 1: 1 magnitude"),
    (0, "--stack 0 is out of range"),
    ("feildmap", "no stack named 'feildmap'; did you mean 'fieldmap'?; it holds: 1 magnitude"),
])
def test_stack_out_of_range_or_unknown_names_the_stacks(stack, expected):
    with pytest.raises(UsageError) as info:
        read_volume(qa_enh(PHILIPS), stack=stack)
    assert expected in str(info.value)


# -- Siemens XA10: four enhanced objects of one series, one time point each ------------------
def test_siemens_xa10_objects_keep_their_geometry_and_values():
    ref = nib.load(qa_enh("Ref/Siemens_REST1_w_SMS_PF7-8_6.nii"))
    assert ref.shape[3] == 4
    for t in range(4):
        volume = read_volume(qa_enh(f"In/Siemens/XA10/6_{t + 1}.dcm"))
        ours = on_reference_grid(volume.affine, volume.array, ref.slicer[..., t])
        np.testing.assert_array_equal(ours, np.asarray(ref.dataobj[..., t]))


def test_siemens_xa10_folder_is_four_time_points():
    folder = qa_enh("In/Siemens/XA10")
    stacks = list_stacks(folder)
    assert [s.label for s in stacks] == ["t1", "t2", "t3", "t4"]
    assert [tuple(p.rsplit("/", 1)[-1] for p in s.files) for s in stacks] == \
        [("6_1.dcm",), ("6_2.dcm",), ("6_3.dcm",), ("6_4.dcm",)]
    third = read_volume(folder, stack="t3")
    alone = read_volume(folder / "6_3.dcm")
    np.testing.assert_array_equal(third.array, alone.array)
    np.testing.assert_array_equal(third.affine, alone.affine)
    with pytest.raises(ImageReadError, match="holds 4 image stacks"):
        read_volume(folder)


# -- single-frame series: stacks told apart by SeriesNumber, ImageType, EchoNumbers ---------
def _write_stacks(folder, tags_per_stack, n=3, series_uid="1.2.3.4"):
    """One slice per position per stack, the same 3 positions; returns {stack: [slices]}."""
    rng = np.random.default_rng(7)
    written = {}
    for s, tags in enumerate(tags_per_stack):
        slices = [rng.integers(0, 3000, (6, 8)).astype(np.int16) for _ in range(n)]
        for k, pixels in enumerate(slices):
            ds = ct_slice(pixels, (10, 20, 2.0 * k), series_uid=series_uid, **tags)
            save(ds, folder / f"{generate_uid()[-12:]}.dcm")  # names do not sort by stack
        written[s] = slices
    return written


def _assert_slices(volume, slices):
    assert volume.shape == (8, 6, len(slices))
    for k, pixels in enumerate(slices):
        np.testing.assert_array_equal(volume.array[:, :, k], pixels.T)
    np.testing.assert_allclose(volume.affine[:3, 3], [-10, -20, 0])


def test_series_numbers_sharing_a_uid_are_stacks_and_a_file_reads_its_own(tmp_path):
    """What an anonymiser or dcmodify leaves: one UID, two SeriesNumbers, same positions."""
    folder = tmp_path / "series"
    written = _write_stacks(folder, [{"SeriesNumber": 7}, {"SeriesNumber": 3}])
    stacks = list_stacks(folder)
    assert [s.label for s in stacks] == ["series 3", "series 7"]  # numbered in order
    _assert_slices(read_volume(folder, stack="series7"), written[0])
    _assert_slices(read_volume(folder, stack=1), written[1])
    for path in stacks[1].files:  # a file of series 7 alone: its own stack
        _assert_slices(read_volume(path), written[0])
    with pytest.raises(ImageReadError, match=r"series: holds 2 image stacks.*1 series 3 "
                                             r"\(3 slices\), 2 series 7 \(3 slices\)"):
        read_volume(folder)


def test_magnitude_and_phase_by_image_type(tmp_path):
    folder = tmp_path / "series"
    written = _write_stacks(folder, [{"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]},
                                     {"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}])
    assert [s.label for s in list_stacks(folder)] == ["magnitude", "phase"]
    _assert_slices(read_volume(folder, stack="phase"), written[1])
    _assert_slices(read_volume(folder, stack="M"), written[0])


def test_echoes_by_echo_number(tmp_path):
    folder = tmp_path / "series"
    written = _write_stacks(folder, [{"EchoNumbers": 2}, {"EchoNumbers": 1}, {"EchoNumbers": 10}])
    assert [s.label for s in list_stacks(folder)] == ["echo 1", "echo 2", "echo 10"]
    _assert_slices(read_volume(folder, stack="echo2"), written[0])
    _assert_slices(read_volume(folder, stack="e10"), written[2])


def test_dixon_stacks_as_channels_in_the_order_given(tmp_path):
    folder = tmp_path / "dixon"
    kinds = ["WATER", "FAT", "IN_PHASE", "OPP_PHASE"]
    written = _write_stacks(folder, [{"ImageType": ["DERIVED", "PRIMARY", "DIXON", k]}
                                     for k in kinds])
    assert [s.label for s in list_stacks(folder)] == \
        ["water", "fat", "in_phase", "opposed_phase"]
    image = read_case_image(Case("dixon", (folder,)), stack=["fat", "water"])
    assert image.shape == (2, 8, 6, 3)
    for k in range(3):
        np.testing.assert_array_equal(image.array[0, :, :, k], written[1][k].T)
        np.testing.assert_array_equal(image.array[1, :, :, k], written[0][k].T)
    _assert_slices(read_volume(folder, stack="op"), written[3])


def test_diffusion_b_values_name_stacks(tmp_path):
    folder = tmp_path / "dwi"
    written = _write_stacks(folder, [{"DiffusionBValue": 1000}, {"DiffusionBValue": 0},
                                     {"DiffusionBValue": 50}])
    stacks = list_stacks(folder)
    assert [s.label for s in stacks] == ["b0", "b50", "b1000"]
    _assert_slices(read_volume(folder, stack="b1000"), written[0])
    _assert_slices(read_volume(folder, stack=2), written[2])
    with pytest.raises(UsageError, match=r"no stack named 'b100'; did you mean 'b1000'\?"):
        read_volume(folder, stack="b100")


def test_one_slice_in_several_transfer_syntaxes_each_file_alone_is_its_own(tmp_path):
    """The same single-frame image saved in several transfer syntaxes, one UID and one
    SeriesNumber (as the team's QA cases hold it): nothing but the syntax tells the files
    apart, so each is a stack of its own, and a file alone reads as itself."""
    rng = np.random.default_rng(12)
    pixels = rng.integers(-1000, 2000, (6, 8)).astype(np.int16)
    folder = tmp_path / "syntaxes"
    files = []
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                   DeflatedExplicitVRLittleEndian, RLELossless):
        ds = ct_slice(pixels, (10, 20, 0.0), SeriesNumber=5)
        try:
            if syntax.is_compressed:
                ds.compress(syntax)
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            files.append(save(ds, folder / f"{syntax.keyword}.dcm"))
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            pytest.skip(f"pydicom cannot encode {syntax.name} here: {exc}")
    for path in files:
        _assert_slices(read_volume(path), [pixels])
    stacks = list_stacks(folder)
    assert sorted(s.label for s in stacks) == sorted(p.name for p in files)
    _assert_slices(read_volume(folder, stack="rlelossless"), [pixels])
    with pytest.raises(UsageError, match=r"--stack 9 is out of range: it holds 4 stack\(s\), "
                                         r"numbered from 1: 1 .*\.dcm \(1 slices\)"):
        read_volume(folder, stack=9)


def test_a_series_without_repeated_positions_stays_one_stack(tmp_path):
    """Split only where positions repeat: differing ImageType alone splits nothing."""
    folder = tmp_path / "series"
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 100, (6, 8)).astype(np.int16) for _ in range(4)]
    for k, pixels in enumerate(slices):
        kind = ["ORIGINAL", "PRIMARY", "AXIAL"] if k else ["DERIVED", "SECONDARY", "AXIAL"]
        save(ct_slice(pixels, (10, 20, 2.0 * k), ImageType=kind), folder / f"{k}.dcm")
    assert len(list_stacks(folder)) == 1
    _assert_slices(read_volume(folder), slices)


def test_repeated_positions_with_nothing_to_tell_them_apart_name_the_given_file(tmp_path):
    folder = tmp_path / "series"
    _write_stacks(folder, [{}, {}])
    one = sorted(folder.iterdir())[0]
    with pytest.raises(GeometryError) as info:
        read_volume(one)
    assert str(info.value).startswith(f"{one}: slices share a position")


# -- Siemens mosaics ----------------------------------------------------------------------------
def _mosaic_file(path, volume_zrc, syntax=ExplicitVRLittleEndian, series_uid=None, b_value=0):
    """nibabel's Siemens mosaic header (real CSA: 48 tiles, slice normal, B_value
    ``b_value``) holding ``volume_zrc`` (48, 128, 128 as slice, row, column), tiled 7 x 7
    into its frame."""
    ds = nibabel_mosaic(b_value)
    frame = np.zeros((896, 896), np.uint16)
    for k, tile in enumerate(volume_zrc):
        frame[(k // 7) * 128:(k // 7 + 1) * 128, (k % 7) * 128:(k % 7 + 1) * 128] = tile
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = frame.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _known_volume(seed=11):
    """(48, 128, 128) slice, row, column: a value per voxel that says where it is."""
    z, r, c = np.meshgrid(np.arange(48), np.arange(128), np.arange(128), indexing="ij")
    noise = np.random.default_rng(seed).integers(0, 50, z.shape)
    return (z * 1000 + r * 3 + c * 5 + noise).astype(np.uint16) % 60000


def test_mosaic_is_demosaiced_into_the_known_volume(tmp_path):
    known = _known_volume()
    volume = read_volume(_mosaic_file(tmp_path / "m.dcm", known))
    assert volume.shape == (128, 128, 48) and volume.meta["mosaic_slices"] == 48
    np.testing.assert_array_equal(volume.array, known.transpose(2, 1, 0))  # (x=col, y=row, z)
    assert volume.spacing_mm == pytest.approx((1.796875, 1.796875, 3.0), abs=1e-4)


def test_mosaic_equals_dcm2niix_in_values_and_physical_space(tmp_path):
    known = _known_volume()
    path = _mosaic_file(tmp_path / "in" / "m.dcm", known)
    (ref_path,) = run_dcm2niix(path.parent, tmp_path / "out")
    ref = nib.load(ref_path)
    volume = read_volume(path)
    ours = on_reference_grid(volume.affine, volume.array, ref)
    np.testing.assert_array_equal(ours, np.asarray(ref.dataobj).astype(ours.dtype))


SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLSLossless, JPEG2000Lossless]


def test_one_mosaic_in_several_transfer_syntaxes_sharing_a_series(tmp_path):
    """Each file alone is its own de-mosaiced volume; the folder lists one stack per file."""
    known = _known_volume(5)
    uid = generate_uid()
    folder = tmp_path / "syntaxes"
    files = []
    for syntax in SYNTAXES:
        try:
            files.append(_mosaic_file(folder / f"{syntax.keyword or syntax.name}.dcm", known,
                                      syntax, series_uid=uid))
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            pytest.skip(f"pydicom cannot encode {syntax.name} here: {exc}")
    for path in files:
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID in \
            SYNTAXES
        np.testing.assert_array_equal(read_volume(path).array, known.transpose(2, 1, 0))
    stacks = list_stacks(folder)
    assert len(stacks) == len(SYNTAXES)
    assert sorted(s.label for s in stacks) == sorted(p.name for p in files)
    np.testing.assert_array_equal(read_volume(folder, stack=files[3].stem).array,
                                  known.transpose(2, 1, 0))


def test_diffusion_mosaics_are_named_by_their_csa_b_value(tmp_path):
    """Two of nibabel's real Siemens DWI headers (CSA B_value 0 and 1000) in one series."""
    uid = generate_uid()
    known = {b: _known_volume(b + 1) for b in (0, 1000)}
    for b in (1000, 0):
        _mosaic_file(tmp_path / "dwi" / f"dwi{b}.dcm", known[b], series_uid=uid, b_value=b)
    stacks = list_stacks(tmp_path / "dwi")
    assert [s.label for s in stacks] == ["b0", "b1000"]  # ordered by b-value
    for b in (0, 1000):
        np.testing.assert_array_equal(read_volume(tmp_path / "dwi", stack=f"b{b}").array,
                                      known[b].transpose(2, 1, 0))


def test_mosaic_without_csa_is_one_line(tmp_path):
    path = _mosaic_file(tmp_path / "m.dcm", _known_volume())
    ds = pydicom.dcmread(path)
    del ds[0x00291010]
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"m\.dcm: ImageType says MOSAIC but"):
        read_volume(path)


# -- the command line ---------------------------------------------------------------------------
def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_info_lists_the_stacks(capsys):
    from medseg.cli import main

    assert main(["info", str(qa_enh(PHILIPS))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("  stacks       2: pick one with --stack K or --stack NAME")
    assert lines[2].split()[:7] == ["1", "magnitude", "64", "x", "64", "x", "32"]
    assert lines[3].split()[:2] == ["2", "field_map"] and "4 x 4 x 4" in lines[3]
    assert main(["info", str(qa_enh(PHILIPS)), "--stack", "fieldmap"]) == 0
    assert "  stack        2: field_map" in capsys.readouterr().out


def test_cli_convert_chooses_a_stack_and_refuses_none_in_one_line(tmp_path, capsys):
    from medseg.cli import main

    out = tmp_path / "fmap.nii.gz"
    assert main(["convert", str(qa_enh(PHILIPS)), str(out)]) != 0
    line = _error_line(capsys)
    assert line.startswith(f"medseg: error: {qa_enh(PHILIPS)}: holds 2 image stacks")
    assert "--stack" in line and "2 field_map (32 frames)" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert main(["convert", str(qa_enh(PHILIPS)), str(out), "--stack", "5"]) != 0
    assert "--stack 5 is out of range: it holds 2 stack(s)" in _error_line(capsys)
    assert main(["convert", str(qa_enh(PHILIPS)), str(out), "--stack", "field_map"]) == 0
    written = nib.load(out)
    expected = read_volume(qa_enh(PHILIPS), stack=2)
    np.testing.assert_allclose(written.affine, expected.affine, atol=1e-5)
    np.testing.assert_allclose(written.get_fdata(), expected.array, atol=1e-4)
