"""Compressed transfer syntaxes: each decodes to the uncompressed original (GDCM and pydicom).

Objects pydicom ships (MR_small in RLE, JPEG 2000 and JPEG-LS) or that the test
encodes (JPEG lossless by GDCM, JPEG baseline by Pillow, JPEG-LS near-lossless and
JPEG 2000 lossy by pydicom's encoders) are read as a one-file series, once through
GDCM and once through pydicom's plugins (GDCM made to fail), and compared with the
uncompressed pixels: exactly for lossless codecs, within a bound for lossy ones.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_helpers import sample, save
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from medseg.errors import ImageReadError
from medseg.io import read_volume


def _mr_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def _gdcm_jpeg_lossless(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    """``ds`` with its pixels re-encoded as JPEG Lossless SV1 by GDCM (through SimpleITK)."""
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(sitk.GetImageFromArray(ds.pixel_array[None]))
    encoded = pydicom.dcmread(path)
    assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encoded.PixelData
    return ds


def _eight_bit(ds: pydicom.Dataset) -> pydicom.Dataset:
    """MR_small scaled to 0..255 in 8 bits, uncompressed (the reference for JPEG baseline)."""
    values = ds.pixel_array.astype(float)
    ds.PixelData = np.rint(255 * values / values.max()).astype(np.uint8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def _pillow_jpeg_baseline(ds: pydicom.Dataset) -> pydicom.Dataset:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(ds.pixel_array).save(buffer, format="JPEG", quality=95)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def _shipped(name: str):
    return lambda ds, path: pydicom.dcmread(get_testdata_file(name))


#: name -> (make the reference, make the compressed object, max and mean abs error)
CASES = {
    "rle": (None, _shipped("MR_small_RLE.dcm"), 0, 0),
    "jpeg2000-lossless": (None, _shipped("MR_small_jp2klossless.dcm"), 0, 0),
    "jpeg-ls-lossless": (None, _shipped("MR_small_jpeg_ls_lossless.dcm"), 0, 0),
    "jpeg-lossless": (None, _gdcm_jpeg_lossless, 0, 0),
    # JPEG-LS near-lossless guarantees |error| <= the allowed error, pixel by pixel.
    "jpeg-ls-near-lossless": (None, lambda ds, p: _compressed(ds, JPEGLSNearLossless,
                                                              jls_error=3), 3, 3),
    "jpeg-baseline": (_eight_bit, lambda ds, p: _pillow_jpeg_baseline(ds), 16, 2),
}


def _compressed(ds: pydicom.Dataset, syntax: str, **options) -> pydicom.Dataset:
    ds.compress(syntax, generate_instance_uid=False, **options)
    return ds


@pytest.fixture(params=["gdcm", "pydicom"])
def decoder(request, monkeypatch):
    """Decode through GDCM, or through pydicom's plugins with GDCM made to fail."""
    if request.param == "pydicom":
        def fail(self):
            raise RuntimeError("GDCM made to fail by the test")

        monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", fail)
    return request.param


@pytest.mark.parametrize("name", sorted(CASES))
def test_transfer_syntax_decodes_to_the_original(tmp_path, decoder, name):
    make_reference, make_compressed, max_error, mean_error = CASES[name]
    reference = _mr_small() if make_reference is None else make_reference(_mr_small())
    original = save(reference, tmp_path / "plain" / "slice.dcm")
    base = pydicom.dcmread(original)
    compressed = save(make_compressed(base, tmp_path / "gdcm.dcm"), tmp_path / name / "slice.dcm")
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID.is_compressed
    expected = pydicom.dcmread(original).pixel_array.T[..., None].astype(np.int64)
    got = read_volume(compressed)
    assert got.shape == expected.shape == (64, 64, 1)
    error = np.abs(got.array.astype(np.int64) - expected)
    assert error.max() <= max_error and error.mean() <= mean_error


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_lossy_12_and_16_bit_gdcm_and_pylibjpeg_agree(tmp_path, monkeypatch, name):
    """JPEG extended (12 bit) and lossy JPEG 2000 (16 bit): two decoders, one codestream."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    path = save(ds, tmp_path / "ext" / "slice.dcm")
    by_gdcm = read_volume(path).array
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute",
                        lambda self: (_ for _ in ()).throw(RuntimeError("no GDCM")))
    by_pydicom = read_volume(path).array
    assert by_gdcm.shape == (256, 1024, 1) and by_gdcm.max() > 100
    # decoders may round the inverse DCT / wavelet differently by one grey level
    assert np.abs(by_gdcm.astype(np.int64) - by_pydicom).max() <= 1


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_multiframe_decodes(tmp_path, syntax):
    mf = sample("dcmqi/23x38x3/multiframe/mf.dcm")
    ds = pydicom.dcmread(mf)
    ds.compress(syntax, generate_instance_uid=False)
    path = save(ds, tmp_path / "mf.dcm")
    expected = read_volume(mf)
    got = read_volume(path)
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_array_equal(got.affine, expected.affine)


def test_missing_decoder_names_the_codec_and_its_package(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    ds = pydicom.dcmread(sample("dcmqi/23x38x3/multiframe/mf.dcm"))
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    path = save(ds, tmp_path / "mf.dcm")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(ImageReadError) as exc:
        read_volume(path)
    assert str(exc.value) == (
        f"{path}: pixel data need a decoder that is not installed: JPEG-LS Lossless Image "
        "Compression (1.2.840.10008.1.2.4.80): pip install pyjpegls (or pip install "
        "'medseg[dicom]')"
    )
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute",
                        lambda self: (_ for _ in ()).throw(RuntimeError("no GDCM")))
    series = save(pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm")), tmp_path / "s" / "a.dcm")
    with pytest.raises(ImageReadError, match=r"RLE Lossless \(1.2.840.10008.1.2.5\): pip install "
                                             "pylibjpeg pylibjpeg-rle"):
        read_volume(series)
