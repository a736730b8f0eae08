"""DICOM stacks as a model's input channels (``predict --stack water --stack fat``) and
stacks named by manifests; the reference is the same model run on a NIfTI file holding
the converted stacks as channels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from dicom_helpers import ct_slice, save

from medseg.cli import main

KINDS = ("WATER", "FAT")


def predict(*args) -> int:
    return main(["-q", "predict", *map(str, args), "--device", "cpu"])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _checkpoint(path: Path, channels: tuple[str, ...] = ()) -> Path:
    """A randomly initialised (seed 0) 2-channel ``unet3d`` with z-scored MR input."""
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = models.create("unet3d", 2, 3, depth=2, width=4, norm="batch", convs_per_stage=1)
    card = ModelCard(NetworkSpec.of(model), {"intensity": {"mode": "mr"}},
                     {1: "a", 2: "b"}, WindowSettings((16, 16, 8), 0.25), channels=channels)
    save_checkpoint(path, model.eval(), card)
    return path


@pytest.fixture(scope="module")
def dixon(tmp_path_factory) -> Path:
    """A Dixon series: water and fat images at the same 8 positions, one folder, one UID."""
    folder = tmp_path_factory.mktemp("dixon") / "series"
    rng = np.random.default_rng(4)
    grid = np.mgrid[0:20, 0:24]
    for s, kind in enumerate(KINDS):
        for k in range(8):
            smooth = 800 + 600 * np.sin(grid[0] / (3.0 + s) + k / 2) * np.cos(grid[1] / (4.0 - s))
            pixels = (smooth + rng.normal(0, 60, smooth.shape)).astype(np.int16)
            ds = ct_slice(pixels, (-12.0, 8.0, 3.0 * k), spacing=(1.5, 1.2),
                          ImageType=["DERIVED", "PRIMARY", "DIXON", kind], Modality="MR")
            save(ds, folder / f"{kind.lower()}_{k}.dcm")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"plain": _checkpoint(folder / "plain.safetensors"),
            "named": _checkpoint(folder / "named.safetensors", ("Water", "Fat"))}


@pytest.fixture(scope="module")
def stacked_nifti(dixon, tmp_path_factory) -> tuple[Path, Path]:
    """The two stacks converted by ``medseg convert --stack``, joined as channels (water,
    fat) and (fat, water) in two NIfTI files."""
    folder = tmp_path_factory.mktemp("nifti")
    for name in ("water", "fat"):
        assert main(["-q", "convert", str(dixon), str(folder / f"{name}.nii.gz"),
                     "--stack", name]) == 0
    water, fat = (nib.load(folder / f"{n}.nii.gz") for n in ("water", "fat"))
    np.testing.assert_array_equal(water.affine, fat.affine)
    paths = []
    for name, order in (("water_fat", (water, fat)), ("fat_water", (fat, water))):
        data = np.stack([np.asarray(img.dataobj) for img in order], axis=-1)
        nib.save(nib.Nifti1Image(data, water.affine), folder / f"{name}.nii.gz")
        paths.append(folder / f"{name}.nii.gz")
    return paths[0], paths[1]


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_stacks_as_channels_equal_the_converted_stacks_as_channels(
        tmp_path, dixon, models, stacked_nifti):
    ref = tmp_path / "ref.nii.gz"
    assert predict("-m", models["plain"], "-i", stacked_nifti[0], "-o", ref) == 0
    expected = _labels(ref)
    assert len(np.unique(expected)) >= 2  # the model tells voxels apart
    for stacks in (("1", "2"), ("water", "fat")):
        out = tmp_path / f"{'_'.join(stacks)}.nii.gz"
        args = [a for s in stacks for a in ("--stack", s)]
        assert predict("-m", models["plain"], "-i", dixon, "-o", out, *args) == 0
        np.testing.assert_array_equal(_labels(out), expected)
        np.testing.assert_allclose(nib.load(out).affine, nib.load(ref).affine, atol=1e-5)
    # the order matters: the channels swapped give other labels, and --stack 2 --stack 1
    # is those, not a silently repaired order
    swapped = tmp_path / "swapped.nii.gz"
    assert predict("-m", models["plain"], "-i", stacked_nifti[1], "-o", swapped) == 0
    assert np.count_nonzero(_labels(swapped) != expected) > 0
    out = tmp_path / "2_1.nii.gz"
    assert predict("-m", models["plain"], "-i", dixon, "-o", out, "--stack", "2",
                   "--stack", "1") == 0
    np.testing.assert_array_equal(_labels(out), _labels(swapped))


def test_named_channels_in_the_card_order_and_out_of_it(tmp_path, dixon, models,
                                                        stacked_nifti, capsys):
    ref = tmp_path / "ref.nii.gz"
    assert predict("-m", models["named"], "-i", stacked_nifti[0], "-o", ref) == 0
    out = tmp_path / "out.nii.gz"
    assert predict("-m", models["named"], "-i", dixon, "-o", out,
                   "--stack", "w", "--stack", "2") == 0
    np.testing.assert_array_equal(_labels(out), _labels(ref))
    capsys.readouterr()
    bad = tmp_path / "bad.nii.gz"
    for stacks in (("fat", "water"), ("2", "1")):
        assert predict("-m", models["named"], "-i", dixon, "-o", bad, "--stack", stacks[0],
                       "--stack", stacks[1]) == 2
        line = error_line(capsys)
        assert line.startswith(f"medseg: error: {dixon}: channel 1 is stack 'fat', which is "
                               "the model's channel 2 (Fat): the model takes Water, Fat in this "
                               "order; give --stack water --stack fat")
        assert not bad.exists()


def test_stack_count_against_the_model_channels_is_one_line(tmp_path, dixon, models, capsys):
    out = tmp_path / "out.nii.gz"
    assert predict("-m", models["named"], "-i", dixon, "-o", out, "--stack", "water") == 2
    assert error_line(capsys) == (
        f"medseg: error: {dixon}: --stack water gives 1 stack(s) as channels, but the model "
        f"{models['named']} takes 2 input channels (Water, Fat): give one --stack per channel, "
        "in the model's channel order")
    assert predict("-m", models["plain"], "-i", dixon, "-o", out, "--stack", "1",
                   "--stack", "2", "--stack", "1") == 2
    assert "--stack 1 --stack 2 --stack 1 gives 3 stack(s) as channels, but the model " \
        f"{models['plain']} takes 2 input channels: give" in error_line(capsys)
    assert not out.exists()


# -- manifests naming stacks ---------------------------------------------------------------------
def test_manifests_name_the_stacks_of_their_cases(tmp_path, dixon, models, stacked_nifti):
    ref = tmp_path / "ref.nii.gz"
    assert predict("-m", models["named"], "-i", stacked_nifti[0], "-o", ref) == 0
    csv = tmp_path / "cases.csv"
    csv.write_text(f"image,split,stack,case_id\n{dixon},test,water;fat,dixon\n")
    doc = {"labels": {"0": "background", "1": "a", "2": "b"},
           "training": [], "test": [{"image": str(dixon), "stack": [1, "fat"]}]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    for manifest in (csv, tmp_path / "dataset.json"):
        out = tmp_path / manifest.stem
        assert predict("-m", models["named"], "-i", manifest, "-o", out) == 0
        (written,) = sorted(out.iterdir())
        np.testing.assert_array_equal(_labels(written), _labels(ref))


def test_manifest_stack_errors_name_the_manifest_the_entry_and_the_stacks(
        tmp_path, dixon, models, capsys):
    from medseg.data.manifest import load_manifest, read_case, validate_manifest
    from medseg.errors import ConfigError, UsageError

    csv = tmp_path / "cases.csv"
    csv.write_text(f"image,split,stack,case_id\n{dixon},test,water,w\n{dixon},test,5,x\n")
    cases = load_manifest(csv).cases
    assert [c.stack for c in cases] == [("water",), ("5",)]
    image, _ = read_case(cases[0])
    assert image.shape == (1, 24, 20, 8) and image.meta["stack"] == "water"
    with pytest.raises(UsageError) as info:
        read_case(cases[1])
    assert str(info.value) == (
        f"{csv}: row 3 (case 'x'): {dixon}: stack 5 is out of range: it holds 2 stack(s), "
        "numbered from 1: 1 water (8 slices), 2 fat (8 slices)")
    (problem,) = validate_manifest(load_manifest(csv))
    assert problem.case_id == "x" and "stack 5 is out of range" in problem.message
    assert "name one of the stacks listed in the 'stack' of cases.csv" in problem.fix
    out = tmp_path / "out"
    assert predict("-m", models["named"], "-i", csv, "-o", out, "--stack", "1",
                   "--stack", "2") == 2
    assert "names its stack(s) ['water'] in" in error_line(capsys)
    doc = {"labels": {"0": "background"}, "training": [],
           "test": [{"image": str(dixon), "stack": 0}]}
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"dataset\.json: test\[0\]: stack 0: expected a "
                                          r"stack number from 1"):
        load_manifest(tmp_path / "dataset.json")
    csv.write_text(f"image,label,stack\n{dixon};{dixon},{dixon},water\n")
    with pytest.raises(ConfigError, match=r"row 2: stack \['water'\] picks stacks of one DICOM "
                                          r"input; this case lists 2 image files"):
        load_manifest(csv)
