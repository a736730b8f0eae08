"""``medseg export``: the runner (a subprocess, no medseg import) against ``medseg predict``
(torch, fp32) on the same image: labels on >= 99.9 % of voxels, probabilities within 1e-3,
for a medseg checkpoint (with and without mirroring TTA) and a fold ensemble, in each format
(ONNX in ONNX Runtime, OpenVINO IR in OpenVINO; each skips when its engine is missing); the
folder's contents; one-line errors and nothing partial; the fp16 export's agreement."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from .export_helpers import (
    FORMATS,
    assert_agrees,
    medseg_prediction,
    needs_engine,
    read_runner_output,
    run_runner,
    save_model,
    write_phantom,
)



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {"root": root, "ckpt": save_model(root / "model.safetensors", seed=0),
            "image": write_phantom(root / "case.nii.gz")}


@pytest.fixture(scope="module", params=list(FORMATS))
def exported_as(work, request):
    """The checkpoint exported in each format."""
    from medseg.export import export_model

    needs_engine(request.param)
    return export_model(work["ckpt"], work["root"] / f"export_{request.param}", request.param)


@pytest.fixture(scope="module")
def exported(work):
    from medseg.export import export_model

    needs_engine("onnx")
    return export_model(work["ckpt"], work["root"] / "export")


def test_folder_holds_networks_card_runner_and_requirements(exported_as, work):
    from medseg.card import ModelCard
    from medseg.checkpoint import load_checkpoint

    manifest = json.loads((exported_as / "model.json").read_text())
    fmt = manifest["format"]
    suffix = {"onnx": ".onnx", "openvino": ".xml"}[fmt]
    assert manifest["networks"] == [f"networks/member_0{suffix}"]
    assert sorted(p.name for p in (exported_as / "networks").iterdir()) == (
        ["member_0.onnx"] if fmt == "onnx" else ["member_0.bin", "member_0.xml"])
    assert manifest["combine"] == "mean_softmax"
    assert [s["step"] for s in manifest["steps"]] == ["orientation", "crop", "resample",
                                                      "intensity"]
    _check_network(exported_as / manifest["networks"][0], fmt)
    card = ModelCard.from_dict(json.loads((exported_as / "card.json").read_text()))
    assert card == load_checkpoint(work["ckpt"]).card
    requirements = (exported_as / "requirements.txt").read_text().split()
    assert [r.split(">=")[0] for r in requirements] == ["numpy", "scipy", "nibabel",
                                                        FORMATS[fmt]]
    assert (exported_as / "predict.py").is_file()


def _check_network(path, fmt: str) -> None:
    """Opset >= 17 and dynamic batch and spatial axes; OpenVINO IR: weights in float32
    (``save_model`` would compress them to float16 unless told not to)."""
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(path))
        assert graph.opset_import[0].version >= 17
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "x", "y", "z"]  # dynamic axes
        return
    import openvino as ov

    model = ov.Core().read_model(str(path))
    assert str(model.input(0).get_partial_shape()) == "[?,1,?,?,?]"
    assert model.input(0).get_any_name() == "image"
    weights = {op.get_element_type().get_type_name() for op in model.get_ops()
               if op.get_type_name() == "Constant" and op.get_output_size() == 1
               and len(op.get_output_shape(0)) == 5}  # the convolution kernels
    assert weights == {"f32"}


@pytest.mark.parametrize("tta", [False, True])
def test_runner_agrees_with_medseg_predict(exported_as, work, tmp_path, tta):
    torch.set_num_threads(1)
    out = tmp_path / "labels.nii.gz"
    result = run_runner(exported_as, work["image"], out, "--tta" if tta else "--no-tta")
    assert result.returncode == 0, result.stderr
    assert_agrees(out, work["image"], medseg_prediction(work["ckpt"], work["image"], tta))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_runner_on_a_fold_ensemble(work, tmp_path, fmt):
    from medseg.export import export_model

    needs_engine(fmt)
    run = tmp_path / "run"
    for fold, seed in ((0, 1), (1, 2)):
        save_model(run / f"fold_{fold}" / "best.safetensors", seed=seed)
    folder = export_model(run, tmp_path / "export", fmt)
    assert len(json.loads((folder / "model.json").read_text())["networks"]) == 2
    out = tmp_path / "labels.nii.gz"
    result = run_runner(folder, work["image"], out)
    assert result.returncode == 0, result.stderr
    reference = medseg_prediction(run, work["image"])
    assert_agrees(out, work["image"], reference)
    # the ensemble is not one of its members: fold 0 alone differs from the mean
    alone = medseg_prediction(run / "fold_0" / "best.safetensors", work["image"])
    assert np.abs(alone.probabilities.array - reference.probabilities.array).max() > 1e-2


@pytest.mark.parametrize("folds", [1, 2])
def test_runner_applies_the_card_temperatures_as_predict_does(work, tmp_path, folds):
    """A card with a temperature and a label's own (top-label): the runner's probabilities
    equal medseg predict's calibrated ones (one network: logits scaled; a fold ensemble:
    its mean softmax tempered), and differ from the uncalibrated ones."""
    from medseg.checkpoint import load_checkpoint, update_card
    from medseg.confidence import Confidence
    from medseg.export import export_model

    run = tmp_path / "run"
    paths = [save_model(run / f"fold_{i}" / "best.safetensors", seed=i + 1)
             for i in range(folds)]
    model = run if folds > 1 else paths[0]
    plain = medseg_prediction(model, work["image"])
    for path in paths:
        card = load_checkpoint(path).card
        update_card(path, card.replace(confidence=Confidence(
            temperature=0.5, label_temperatures={1: 0.25})))
    folder = export_model(model, tmp_path / "export")
    out = tmp_path / "labels.nii.gz"
    result = run_runner(folder, work["image"], out)
    assert result.returncode == 0, result.stderr
    reference = medseg_prediction(model, work["image"])
    assert_agrees(out, work["image"], reference)
    assert np.abs(plain.probabilities.array - reference.probabilities.array).max() > 0.1


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cli_export_and_fp16_agreement(work, tmp_path, fmt):
    """``medseg export --fp16``: half-precision networks; the labels still agree on
    >= 99 % of voxels and the probabilities within 1e-2 (stated, not the fp32 target)."""
    from medseg.cli import main

    needs_engine(fmt)
    folder = tmp_path / "fp16"
    assert main(["export", str(work["ckpt"]), "-o", str(folder), "--fp16", "--format",
                 fmt]) == 0
    assert json.loads((folder / "model.json").read_text())["fp16"] is True
    out = tmp_path / "labels.nii.gz"
    result = run_runner(folder, work["image"], out)
    assert result.returncode == 0, result.stderr
    labels, probs, _ = read_runner_output(out)
    reference = medseg_prediction(work["ckpt"], work["image"])
    assert np.mean(labels == reference.labels.array) >= 0.99
    assert np.abs(probs - reference.probabilities.array).max() <= 1e-2


def test_runner_errors_are_one_line_and_leave_nothing(exported, work, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for image, what in ((broken, "cannot read NIfTI"), (tmp_path / "missing.nii.gz",
                                                        "no such file")):
        result = run_runner(exported, image, out_dir / "labels.nii.gz")
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines == [f"predict.py: error: {image}: {lines[0].split(': ', 3)[-1]}"]
        assert what in lines[0]
        assert list(out_dir.iterdir()) == []  # no output, no temporary file


def test_runner_bf16_needs_an_openvino_export(exported, work, tmp_path):
    result = run_runner(exported, work["image"], tmp_path / "labels.nii.gz", "--bf16")
    assert result.returncode == 2  # a usage error
    assert result.stderr.strip() == ("predict.py: error: bf16 runs in OpenVINO; this export "
                                     "is onnx: export it again with --format openvino")
    assert list(tmp_path.iterdir()) == []


def test_runner_refuses_wrong_channels(exported, work, tmp_path):
    import nibabel as nib

    two = tmp_path / "two.nii.gz"
    source = nib.load(work["image"])
    nib.save(nib.Nifti1Image(np.stack([source.get_fdata()] * 2, -1).astype(np.float32),
                             source.affine), two)
    result = run_runner(exported, two, tmp_path / "labels.nii.gz")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"predict.py: error: {two}: the model expects 1 input "
                                     "channel(s), the image has 2")
    assert not (tmp_path / "labels.nii.gz").exists()


class _Lgamma(torch.nn.Module):
    def forward(self, x):
        return torch.lgamma(x.abs() + 1)


def test_unsupported_layer_is_named_with_a_format_that_works(work, tmp_path):
    from medseg import models
    from medseg.card import ModelCard, NetworkSpec, WindowSettings
    from medseg.errors import ExportError
    from medseg.export import export_model
    from medseg.sources import LoadedModel

    net = models.create("unet3d", 1, 3, depth=2, width=2, seed=0)
    net.head = torch.nn.Sequential(net.head, _Lgamma())
    card = ModelCard(NetworkSpec("unet3d", 1, 3, {}), {}, {1: "a", 2: "b"},
                     WindowSettings((16, 16, 16)))
    with pytest.raises(ExportError) as info:
        export_model(LoadedModel(net, card), tmp_path / "export")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("layer 'head.1' (_Lgamma) cannot be expressed in ONNX opset 17")
    assert "aten::lgamma" in message and "TorchScript" in message
    assert list(tmp_path.iterdir()) == []  # nothing partial


def test_export_refuses_a_folder_of_other_files(work, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "medseg", "export", str(work["ckpt"]), "-o",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("medseg: error: export folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_runner_imports_neither_torch_nor_medseg(exported):
    from medseg.errors import ExportError
    from medseg.export.vendor import check_runner

    check_runner(exported)  # the shipped runner passes
    probe = exported / "_runner" / "window.py"
    text = probe.read_text()
    probe.write_text(text + "\n\ndef _late():\n    import torch\n")
    with pytest.raises(ExportError, match="window.py imports torch"):
        check_runner(exported)
    probe.write_text(text)
