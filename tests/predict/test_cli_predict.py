"""``medseg predict`` end to end: NIfTI and DICOM in, NIfTI and DICOM-SEG out, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.volume import Volume

from .predict_helpers import (
    LABEL_NAMES,
    label_centroids_lps,
    pixel_lps,
    seg_centroids_lps,
    threshold_labels,
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def predict(*args) -> int:
    return main(["-q", "predict", *map(str, args), "--device", "cpu"])


def files_in(folder: Path) -> list[str]:
    """Every entry, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def nifti_case(tmp_path, phantom):
    """Write a phantom with nibabel (LPS, oblique); return (path, PhantomCase)."""
    def make(name: str, orientation: str = "LPS", oblique: float = 15.0) -> tuple[Path, object]:
        case = phantom(orientation, oblique)
        folder = tmp_path / "in"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(case.image.array, case.image.affine), path)
        return path, case
    return make


# -- geometry and content ------------------------------------------------------------------------
@pytest.mark.parametrize("orientation,oblique", [("RAS", 0.0), ("LPS", 0.0), ("LPS", 30.0)])
def test_nifti_file_to_file(tmp_path, threshold_ckpt, nifti_case, orientation, oblique):
    src, case = nifti_case("ct", orientation, oblique)
    out = tmp_path / "out" / "pred.nii.gz"
    assert predict("-m", threshold_ckpt, "-i", src, "-o", out) == 0
    ref, pred = nib.load(src), nib.load(out)
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    assert pred.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(pred.dataobj), threshold_labels(ref.get_fdata()))


def test_write_volume_input_resampling_checkpoint(tmp_path, resampling_ckpt, phantom):
    from medseg.io import write_volume

    case = phantom("LPS", 10.0)
    src = write_volume(case.image, tmp_path / "lps.nii.gz")
    assert predict("-m", resampling_ckpt, "-i", src, "-o", tmp_path / "o") == 0
    ref, pred = nib.load(src), nib.load(tmp_path / "o" / "lps.nii.gz")
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)


def test_folder_probabilities_preview(tmp_path, threshold_ckpt, nifti_case):
    src_a, case_a = nifti_case("a")
    nifti_case("b", "RAS", 0.0)
    out = tmp_path / "preds"
    args = ["-m", threshold_ckpt, "-i", src_a.parent, "-o", out, "--save-probabilities",
            "--tta", "--overlap", "0.5", "--batch-size", "2"]
    try:
        import medseg.report  # noqa: F401
        have_preview = True
        args.append("--preview")
    except ImportError:
        have_preview = False
    assert predict(*args) == 0
    expected = {"a.nii.gz", "a_probabilities.nii.gz", "b.nii.gz", "b_probabilities.nii.gz"}
    if have_preview:
        expected |= {"a_preview.png", "b_preview.png"}
    assert set(files_in(out)) == expected
    probs = nib.load(out / "a_probabilities.nii.gz")
    assert probs.shape == case_a.image.shape + (3,)  # channels as the 4th dimension
    np.testing.assert_allclose(probs.affine, nib.load(src_a).affine, atol=1e-5)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)
    labels = np.asarray(nib.load(out / "a.nii.gz").dataobj)
    np.testing.assert_array_equal(np.argmax(p, axis=-1), labels)
    if have_preview:
        assert (out / "a_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_manifest_and_torchrun_sharding(tmp_path, threshold_ckpt, nifti_case, monkeypatch):
    names = ["c0", "c1", "c2"]
    paths = [nifti_case(n, "RAS", 0.0)[0] for n in names]
    doc = {"labels": {"0": "background", "1": "soft_tissue", "2": "dense"},
           "training": [], "test": [f"./in/{p.name}" for p in paths]}
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps(doc))
    seen = []
    for rank in range(2):
        out = tmp_path / f"rank{rank}"
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert predict("-m", threshold_ckpt, "-i", manifest, "-o", out) == 0
        seen.append(files_in(out))
    assert seen == [["c0.nii.gz", "c2.nii.gz"], ["c1.nii.gz"]]


# -- the real DICOM series ------------------------------------------------------------------------
def sitk_reference(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) HU array and RAS affine of a DICOM series, straight from SimpleITK."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), LPS_TO_RAS @ affine


def test_dicom_series_to_nifti_and_dicom_seg(tmp_path, large_roi_ckpt, ct_dicom):
    nifti, seg_path = tmp_path / "ct.nii.gz", tmp_path / "ct.dcm"
    assert predict("-m", large_roi_ckpt, "-i", ct_dicom, "-o", nifti) == 0
    assert predict("-m", large_roi_ckpt, "-i", ct_dicom, "-o", seg_path) == 0
    hu, affine = sitk_reference(ct_dicom)
    pred = nib.load(nifti)
    assert pred.shape == hu.shape == (512, 512, 20)
    np.testing.assert_allclose(pred.affine, affine, atol=1e-4)
    labels = np.asarray(pred.dataobj)
    np.testing.assert_array_equal(labels, threshold_labels(hu))

    seg = pydicom.dcmread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["soft_tissue", "dense"]
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    seg_c = seg_centroids_lps(seg_path)
    nii_c = label_centroids_lps(Volume(labels, pred.affine), LABEL_NAMES)
    half_voxel = 0.5 * np.array([0.9765625, 0.9765625, 2.0])
    for name in LABEL_NAMES.values():
        assert np.all(np.abs(seg_c[name] - nii_c[name]) < half_voxel), (name, seg_c, nii_c)
    # and from the source slices themselves: each dense pixel's LPS position via its own tags
    dense = []
    for f in sorted(ct_dicom.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ipp = np.array(ds.ImagePositionPatient, float)
        k = int(np.argmin(np.abs(_slice_positions(affine) - ipp[2])))
        r, c = np.nonzero(labels[:, :, k].T == 2)  # (x, y) of a HFS axial slice = (col, row)
        dense.append(pixel_lps(ds, r, c))
    np.testing.assert_allclose(np.concatenate(dense).mean(axis=0), seg_c["dense"], atol=1e-3)


def _slice_positions(affine: np.ndarray) -> np.ndarray:
    """S (= LPS z) of each z slice of an axial RAS affine."""
    return affine[2, 3] + affine[2, 2] * np.arange(20)


# -- bad input: one line naming the file, non-zero exit, nothing written --------------------------
def test_channel_mismatch(tmp_path, two_channel_ckpt, nifti_case, capsys):
    src, _ = nifti_case("ct")
    out = tmp_path / "o"
    assert predict("-m", two_channel_ckpt, "-i", src, "-o", out) == 1
    line = error_line(capsys)
    assert line.startswith(f"medseg: error: {src}: checkpoint ")
    assert "expects 2 input channels, image has 1 channel" in line
    assert files_in(out) == []


def test_incompatible_checkpoint_version(tmp_path, threshold_ckpt, nifti_case, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(threshold_ckpt), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        meta = json.loads(handle.metadata()["medseg"])
    meta["format_version"] += 1
    future = tmp_path / "future.safetensors"
    save_file(tensors, str(future), metadata={"medseg": json.dumps(meta)})
    src, _ = nifti_case("ct")
    out = tmp_path / "o"
    assert predict("-m", future, "-i", src, "-o", out) == 1
    line = error_line(capsys)
    assert line.startswith(f"medseg: error: {future}: checkpoint format_version 3 is not supported")
    assert files_in(out) == []


def test_nan_image(tmp_path, threshold_ckpt, phantom, capsys):
    case = phantom("RAS")
    array = case.image.array.astype(np.float32)
    array[1, 2, 3] = np.nan
    src = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(array, case.image.affine), src)
    out = tmp_path / "o" / "pred.nii.gz"
    assert predict("-m", threshold_ckpt, "-i", src, "-o", out) == 1
    assert error_line(capsys).startswith(f"medseg: error: {src}: image holds 1 NaN")
    assert files_in(out.parent) == []


def test_unwritable_outputs(tmp_path, threshold_ckpt, nifti_case, capsys):
    src, _ = nifti_case("ct")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert predict("-m", threshold_ckpt, "-i", src, "-o", blocker / "pred.nii.gz") == 1
    line = error_line(capsys)
    assert line.startswith(f"medseg: error: {blocker}: cannot create the output folder")
    # the prediction's name is taken by a folder: the probabilities already written are removed
    out = tmp_path / "o"
    (out / "ct.nii.gz").mkdir(parents=True)
    assert predict("-m", threshold_ckpt, "-i", src, "-o", out, "--save-probabilities") == 1
    line = error_line(capsys)
    assert line.startswith(f"medseg: error: {out / 'ct.nii.gz'}: ")
    assert files_in(out) == ["ct.nii.gz"] and files_in(out / "ct.nii.gz") == []


def test_usage_errors(tmp_path, threshold_ckpt, nifti_case, capsys):
    src, _ = nifti_case("ct")
    nifti_case("ct2")
    assert predict("-m", threshold_ckpt, "-i", src.parent, "-o", tmp_path / "x.nii.gz") == 2
    assert "input holds 2 cases; give an output folder" in error_line(capsys)
    assert predict("-m", threshold_ckpt, "-i", src, "-o", tmp_path / "x.dcm") == 2
    assert "needs a DICOM series as input" in error_line(capsys)
    assert predict("-m", threshold_ckpt, "-i", src, "-o", tmp_path / "o", "--overlap", "1.5") == 2
    assert "overlap must be a number in [0, 1), got 1.5" in error_line(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.nii.gz").exists()


def test_unknown_series_uid(tmp_path, large_roi_ckpt, ct_dicom, capsys):
    out = tmp_path / "o"
    assert predict("-m", large_roi_ckpt, "-i", ct_dicom, "-o", out, "--series", "1.2.3.4") != 0
    line = error_line(capsys)
    assert line.startswith(f"medseg: error: {ct_dicom}") and "1.2.3.4" in line
    assert files_in(out) == []


@pytest.mark.parametrize("flag,amp", [((), None), (("--amp",), True), (("--no-amp",), False)])
def test_amp_flag_reaches_the_network(tmp_path, threshold_ckpt, nifti_case, monkeypatch,
                                      flag, amp):
    """--amp/--no-amp set the precision policy; without either it is auto (None). The
    runtime resolved from them is the one the network runs under."""
    from medseg.inference import backends as predict_module  # the predictor's door (torch)
    from medseg.runtime import Runtime

    seen, used = [], []
    resolve = Runtime.resolve.__func__
    monkeypatch.setattr(Runtime, "resolve", classmethod(
        lambda cls, device="auto", value=None, environ=None:
        seen.append(value) or resolve(cls, device, False, environ)))
    make = predict_module.make_predictor
    monkeypatch.setattr(predict_module, "make_predictor",
                        lambda model, runtime: used.append(runtime) or make(model, runtime))
    src, case = nifti_case("ct", "RAS", 0.0)
    assert predict("-m", threshold_ckpt, "-i", src, "-o", tmp_path / "p.nii.gz", *flag) == 0
    assert seen == [amp]
    assert len(used) == 1 and used[0].precision == "fp32"


@pytest.mark.parametrize("flag,expected", [((), "linear"), (("--label-interp", "nearest"),
                                                            "nearest")])
def test_label_interp_flag(tmp_path, monkeypatch, flag, expected):
    from medseg.inference import batch

    seen = {}
    monkeypatch.setattr(batch, "predict_cases",
                        lambda *a, **kw: seen.update(options=a[3]) or [])
    assert predict("-m", tmp_path / "m.safetensors", "-i", tmp_path, "-o", tmp_path / "o",
                   *flag) == 0
    assert seen["options"].label_interp == expected


def test_label_interp_flag_rejects_unknown(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict("-m", tmp_path / "m.safetensors", "-i", tmp_path, "-o", tmp_path / "o",
                "--label-interp", "cubic")
    assert exit_info.value.code == 2
    assert "--label-interp: invalid choice: 'cubic'" in capsys.readouterr().err
