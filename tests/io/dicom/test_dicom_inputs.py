"""DICOM inputs as users have them: one file, multi-frame objects, non-images, localizers, int16."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import copy_files, ct_slice, sample, save
from pydicom.data import get_testdata_file

from medseg.cli import main
from medseg.data.inputs import list_cases
from medseg.errors import GeometryError, ImageReadError, UsageError
from medseg.io import read_volume
from medseg.io.cases import Case


def _one_error(capsys, args: list[str]) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- one file stands for its series ------------------------------------------------------------
def test_one_file_reads_its_series(tmp_path):
    folder = sample("dcmqi/ct-3slice")
    whole = read_volume(folder)
    for f in sorted(folder.glob("*.dcm")):
        single = read_volume(f)
        np.testing.assert_array_equal(single.array, whole.array)
        np.testing.assert_array_equal(single.affine, whole.affine)
        assert single.meta["dicom_files"] == whole.meta["dicom_files"]
    renamed = copy_files(sorted(folder.glob("*.dcm")), tmp_path / "s")
    (renamed / "02.dcm").rename(renamed / "IM000002")  # no extension: found by the preamble
    np.testing.assert_array_equal(read_volume(renamed / "IM000002").array, whole.array)


def test_one_file_picks_its_series_among_several(dicom_copy, ct_dicom):
    uid = pydicom.uid.generate_uid()
    for f in sorted(dicom_copy.glob("*.dcm"))[:5]:
        ds = pydicom.dcmread(f)
        ds.decompress()  # JPEG 2000 in the original
        ds.SeriesInstanceUID = uid
        ds.PixelData = (ds.pixel_array + 7).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(dicom_copy / f"other_{f.name}")
    first = sorted(ct_dicom.glob("*.dcm"))[0].name
    original = read_volume(dicom_copy / first)
    assert original.shape == (512, 512, 20)
    other = read_volume(dicom_copy / f"other_{first}")
    assert other.shape == (512, 512, 5) and other.meta["series_uid"] == uid
    with pytest.raises(UsageError, match="belongs to series"):
        read_volume(dicom_copy / first, series=uid)


def test_cli_and_list_cases_take_a_dcm_file(tmp_path):
    first = sample("dcmqi/ct-3slice") / "01.dcm"
    (case,) = list_cases(first)
    assert case == Case("01", (first,), split="test") and case.is_dicom
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", str(first), str(out)]) == 0
    np.testing.assert_array_equal(read_volume(out).array, read_volume(first.parent).array)


# -- enhanced multi-frame ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["23x38x3", "24x38x3"])
def test_multiframe_equals_its_single_frame_series(name):
    series = read_volume(sample(f"dcmqi/{name}/image"))
    mf = sample(f"dcmqi/{name}/multiframe/mf.dcm")
    for path in (mf, mf.parent):
        volume = read_volume(path)
        assert volume.shape == series.shape and volume.array.ndim == 3
        np.testing.assert_array_equal(volume.array, series.array)
        np.testing.assert_allclose(volume.affine, series.affine, atol=1e-6)


def test_multiframe_frames_are_placed_by_their_positions(tmp_path):
    """Frames stored in reverse order still land at their PlanePositionSequence."""
    ds = pydicom.dcmread(sample("dcmqi/23x38x3/multiframe/mf.dcm"))
    frames = ds.pixel_array.copy()
    frames[1] += 5  # make the frames distinguishable
    ds.PixelData = frames[::-1].tobytes()
    ds.PerFrameFunctionalGroupsSequence = list(ds.PerFrameFunctionalGroupsSequence)[::-1]
    save(ds, tmp_path / "reversed.dcm")
    volume = read_volume(tmp_path / "reversed.dcm")
    reference = read_volume(sample("dcmqi/23x38x3/image"))
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-6)
    for k in range(3):  # (rows, columns) frame k is the (x, y) slice k, transposed
        np.testing.assert_array_equal(volume.array[:, :, k], frames[k].T)
    assert volume.meta["dicom_frames"] == [3, 2, 1]


def test_multiframe_rescale_per_frame_gives_int16(tmp_path):
    ds = pydicom.dcmread(sample("dcmqi/23x38x3/multiframe/mf.dcm"))
    stored = ds.pixel_array.astype(np.int64)
    for item, intercept in zip(ds.PerFrameFunctionalGroupsSequence, (-1024, -1000, 0)):
        transform = pydicom.Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 1, intercept
        transform.RescaleType = "HU"
        item.PixelValueTransformationSequence = [transform]
    save(ds, tmp_path / "hu.dcm")
    volume = read_volume(tmp_path / "hu.dcm")
    assert volume.array.dtype == np.int16
    for k, intercept in enumerate((-1024, -1000, 0)):
        np.testing.assert_array_equal(volume.array[:, :, k], (stored[k] + intercept).T)


# -- objects that are not images -----------------------------------------------------------------
def test_folder_with_only_a_seg_is_refused(tmp_path, capsys):
    folder = copy_files([sample("dcmqi/liver.dcm")], tmp_path / "seg")
    line = _one_error(capsys, ["info", str(folder)])
    assert line == (f"medseg: error: {folder}: holds only a DICOM-SEG "
                    "(1.2.840.10008.5.1.4.1.1.66.4: liver.dcm), no image series: read it as "
                    "labels with "
                    "read_labels(..., reference=SERIES)")
    with pytest.raises(ImageReadError, match=r"liver.dcm: holds only a DICOM-SEG"):
        read_volume(folder / "liver.dcm")


def test_folder_with_only_rt_objects_names_each(tmp_path, capsys):
    names = ("rtdose.dcm", "rtplan.dcm", "rtstruct.dcm", "test-SR.dcm")
    folder = copy_files([Path(get_testdata_file(n)) for n in names], tmp_path / "rt")
    line = _one_error(capsys, ["convert", str(folder), str(tmp_path / "out.nii.gz")])
    for expected in ("an RT Dose (1.2.840.10008.5.1.4.1.1.481.2: rtdose.dcm)",
                     "an RT Plan (1.2.840.10008.5.1.4.1.1.481.5: rtplan.dcm)",
                     "an RTSTRUCT (1.2.840.10008.5.1.4.1.1.481.3: rtstruct.dcm)",
                     "a Structured Report (SR) (1.2.840.10008.5.1.4.1.1.88.33: test-SR.dcm)",
                     "medseg reads image series"):
        assert expected in line
    assert not (tmp_path / "out.nii.gz").exists()


def test_non_images_beside_a_series_are_skipped_with_a_note(tmp_path, caplog):
    series = sample("dcmqi/ct-3slice")
    extras = [sample("dcmqi/liver.dcm")] + [Path(get_testdata_file(n)) for n in
                                            ("rtdose.dcm", "rtplan.dcm", "test-SR.dcm")]
    folder = copy_files(sorted(series.glob("*.dcm")) + extras, tmp_path / "mixed")
    with caplog.at_level(logging.INFO, logger="medseg.io.dicom.image"):
        volume = read_volume(folder)
    np.testing.assert_array_equal(volume.array, read_volume(series).array)
    assert "skipped 4 non-image object(s): liver.dcm (DICOM-SEG), rtdose.dcm (RT Dose)" \
        in caplog.text
    mock = read_volume(sample("rt_utils/mock_data"))  # beside its RTSTRUCTs
    assert mock.shape == (512, 512, 2)


# -- localizers and other stacks ----------------------------------------------------------------
def _axial_series(folder: Path, n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    slices = [rng.integers(-1000, 1000, (6, 8)).astype(np.int16) for _ in range(n)]
    for k, pixels in enumerate(slices):
        save(ct_slice(pixels, (10, 20, 2.5 * k), spacing=(0.5, 0.75)), folder / f"ax{k}.dcm")
    return slices


def test_localizers_and_other_orientations_are_left_out(tmp_path, caplog):
    folder = tmp_path / "series"
    slices = _axial_series(folder)
    scout = np.full((30, 40), 7, np.int16)
    save(ct_slice(scout, (0, 0, 0), (1, 0, 0, 0, 0, -1), ImageType=["ORIGINAL", "PRIMARY",
                                                                      "LOCALIZER"]),
         folder / "scout.dcm")
    save(ct_slice(scout, (0, 0, 0), (0, 1, 0, 0, 0, -1)), folder / "sagittal.dcm")
    with caplog.at_level(logging.INFO, logger="medseg.io.dicom.files"):
        volume = read_volume(folder)
    assert volume.shape == (8, 6, 5)
    for k, pixels in enumerate(slices):
        np.testing.assert_array_equal(volume.array[:, :, k], pixels.T)
    np.testing.assert_allclose(volume.affine, [[-0.75, 0, 0, -10], [0, -0.5, 0, -20],
                                               [0, 0, 2.5, 0], [0, 0, 0, 1]])
    assert "left out 1 slice(s) of the series (localizer/scout): scout.dcm" in caplog.text
    assert "left out 1 slice(s) of the series (other orientation or size): sagittal.dcm" \
        in caplog.text


def test_two_equal_stacks_are_still_an_error(tmp_path):
    folder = tmp_path / "series"
    _axial_series(folder, 2)
    for k in range(2):
        save(ct_slice(np.zeros((6, 8), np.int16), (0, 0, k), (0, 1, 0, 0, 0, -1)),
             folder / f"sag{k}.dcm")
    with pytest.raises(GeometryError, match="the folder mixes stacks"):
        read_volume(folder)


# -- integer CT ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("top", "dtype"), [(4000, np.int16), (40000, np.int32)])
def test_unsigned_ct_with_intercept_is_int16_when_it_fits(tmp_path, top, dtype):
    """Stored uint16 with intercept -1024: GDCM gives int32; medseg narrows when values fit."""
    stored = np.linspace(0, top, 48).astype(np.uint16).reshape(6, 8)
    for k in range(3):
        save(ct_slice(stored + k, (0, 0, 2.0 * k), RescaleIntercept=-1024), tmp_path / f"{k}.dcm")
    volume = read_volume(tmp_path)
    assert volume.array.dtype == dtype
    for k in range(3):
        np.testing.assert_array_equal(volume.array[:, :, k], stored.T.astype(np.int64) + k - 1024)


def test_real_ct_is_int16(ct_dicom):
    assert read_volume(ct_dicom).array.dtype == np.int16
    mock = read_volume(sample("rt_utils/mock_data"))
    assert mock.array.dtype == np.int16  # uint16 stored, intercept -1024 (was int32)
    ds = pydicom.dcmread(sample("rt_utils/mock_data") / "ct_1.dcm")
    hu = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    z = mock.meta["dicom_files"].index(str(sample("rt_utils/mock_data") / "ct_1.dcm"))
    np.testing.assert_array_equal(mock.array[:, :, z], hu.T)


def test_missing_file_and_hidden_files(tmp_path):
    folder = tmp_path / "series"
    _axial_series(folder, 3)
    shutil.copyfile(folder / "ax0.dcm", folder / ".ax0.dcm.tmp")  # an interrupted copy: ignored
    assert read_volume(folder).shape == (8, 6, 3)


@pytest.mark.parametrize("cut", ["short_file", "short_element"])
def test_a_native_slice_cut_short_is_refused_naming_the_file(tmp_path, cut):
    """ITK (GDCM) would read a slice whose Pixel Data is cut short without a word, filling
    the rest: the series is refused instead, naming the file and the byte counts (a 16 x 16
    int16 slice needs 16 * 16 * 2 = 512 bytes)."""
    from medseg.errors import ImageReadError
    from medseg.io import read_volume

    from dicom_helpers import ct_slice, save

    pixels = np.arange(256, dtype=np.int16).reshape(16, 16)
    paths = [save(ct_slice(pixels, (0, 0, 2.0 * k)), tmp_path / f"s{k}.dcm") for k in range(4)]
    assert read_volume(tmp_path).shape == (16, 16, 4)
    data = paths[2].read_bytes()
    if cut == "short_file":  # a copy interrupted: the declared length stays 512
        paths[2].write_bytes(data[:-100])
        got = 412
    else:  # a writer that stored fewer bytes and said so
        ds = ct_slice(pixels, (0, 0, 4.0))
        ds.PixelData = ds.PixelData[:300]
        save(ds, paths[2])
        got = 300
    with pytest.raises(ImageReadError) as caught:
        read_volume(tmp_path)
    message = str(caught.value)
    assert "s2.dcm: Pixel Data holds" in message and f"holds {got} bytes" in message
    assert "needs 512" in message and "\n" not in message
