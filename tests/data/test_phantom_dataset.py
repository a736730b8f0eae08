"""The one phantom dataset writer, as training and the demo use it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.config import parse_config
from medseg.data.phantom import make_phantom
from medseg.data.phantom_dataset import PhantomConfig, write_phantom_dataset


def _phantoms(**kw) -> PhantomConfig:
    return PhantomConfig(**{"n_train": 2, "n_val": 1, "shape": [16, 16, 12],
                            "spacing_mm": [9.0, 9.0, 11.0], **kw})


def test_splits_seeds_and_distinct_test_cases(tmp_path):
    manifest = write_phantom_dataset(_phantoms(), tmp_path, n_test=2)
    doc = json.loads(manifest.read_text())
    assert [e["image"] for e in doc["training"]] == [
        "./imagesTr/phantom_000.nii.gz", "./imagesTr/phantom_001.nii.gz"]
    assert [e["label"] for e in doc["validation"]] == ["./labelsTr/phantom_002.nii.gz"]
    assert [e["label"] for e in doc["test"]] == [
        "./labelsTs/phantom_003.nii.gz", "./labelsTs/phantom_004.nii.gz"]
    assert doc["labels"] == {"0": "background", "1": "liver", "2": "spleen",
                             "3": "kidney_left", "4": "kidney_right", "5": "aorta"}
    # case i is make_phantom with seed cfg.seed + i
    test1 = nib.load(tmp_path / "imagesTs" / "phantom_004.nii.gz")
    expected = make_phantom((16, 16, 12), (9.0, 9.0, 11.0), seed=4, noise_hu=20.0)
    np.testing.assert_array_equal(np.asarray(test1.dataobj), expected.image.array)
    np.testing.assert_allclose(test1.affine, expected.image.affine, atol=1e-5)
    train0 = nib.load(tmp_path / "imagesTr" / "phantom_000.nii.gz").get_fdata()
    assert not np.array_equal(train0, test1.get_fdata())


def test_reused_or_rewritten_with_stale_test_files_removed(tmp_path):
    manifest = write_phantom_dataset(_phantoms(), tmp_path, n_test=2)
    stamp = manifest.stat().st_mtime_ns
    image = tmp_path / "imagesTr" / "phantom_000.nii.gz"
    image_stamp = image.stat().st_mtime_ns
    assert write_phantom_dataset(_phantoms(), tmp_path, n_test=2).stat().st_mtime_ns == stamp
    assert image.stat().st_mtime_ns == image_stamp  # reused: nothing rewritten
    write_phantom_dataset(_phantoms(), tmp_path, n_test=1)  # fewer test cases
    assert sorted(p.name for p in (tmp_path / "imagesTs").iterdir()) == ["phantom_003.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "labelsTs").iterdir()) == ["phantom_003.nii.gz"]
    write_phantom_dataset(_phantoms(), tmp_path)  # no test cases at all
    assert list((tmp_path / "imagesTs").iterdir()) == []
    assert json.loads(manifest.read_text())["test"] == []


def test_training_and_demo_write_the_same_files(tmp_path):
    """prepare_data (training) and the demo's call give byte-equal phantoms."""
    from medseg.training.data import _phantom_folder, prepare_data
    from medseg.runtime import Runtime
    from medseg.transforms.pipeline import Preprocessing

    raw = {"data": {"phantom": {"n_train": 2, "n_val": 1, "shape": [16, 16, 12],
                                "spacing_mm": [9.0, 9.0, 11.0]}},
           "preprocessing": {"orientation": "RAS", "spacing_mm": None,
                             "intensity": {"mode": "ct", "window": [-200, 700]},
                             "crop_foreground": False}}
    cfg = parse_config(raw)
    data = prepare_data(cfg, Preprocessing.from_config(raw["preprocessing"]), tmp_path / "cache",
                        Runtime.cpu())
    assert len(data.train) == 2 and len(data.val) == 1
    training = _phantom_folder(cfg.data.phantom, tmp_path / "cache")
    demo = write_phantom_dataset(cfg.data.phantom, tmp_path / "demo", n_test=2).parent
    names = sorted(p.relative_to(training).as_posix() for p in training.glob("*Tr/*.nii.gz"))
    assert len(names) == 6
    for name in names:
        assert (training / name).read_bytes() == (demo / name).read_bytes(), name
    train_doc = json.loads((training / "dataset.json").read_text())
    demo_doc = json.loads((demo / "dataset.json").read_text())
    for key in ("labels", "training", "validation"):
        assert train_doc[key] == demo_doc[key]


def test_dataset_json_is_written_last(tmp_path, monkeypatch):
    """A failure while writing cases leaves no dataset.json (the folder is not reused)."""
    import medseg.io

    calls = []

    def failing(volume, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(volume, path)

    real = medseg.io.write_volume
    monkeypatch.setattr(medseg.io, "write_volume", failing)
    with pytest.raises(OSError, match="disk full"):
        write_phantom_dataset(_phantoms(), tmp_path, n_test=1)
    assert not (tmp_path / "dataset.json").exists()
