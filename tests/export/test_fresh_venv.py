"""The runner installed into a fresh virtualenv with only its ``requirements.txt`` (no torch,
no medseg) agrees with ``medseg predict`` (torch, fp32), and that environment has no torch;
for each export format (ONNX: onnxruntime, OpenVINO IR: openvino)."""

from __future__ import annotations

import subprocess
import sys
import venv

import pytest

from .export_helpers import (
    FORMATS,
    assert_agrees,
    clean_env,
    medseg_prediction,
    needs_engine,
    run_runner,
    save_model,
    write_phantom,
)

@pytest.fixture(scope="module", params=list(FORMATS))
def fresh(tmp_path_factory, request):
    """An exported model and a virtualenv holding only its requirements (pip as configured
    on this machine: its local index and wheels; skipped with the reason when it fails)."""
    from medseg.export import export_model

    needs_engine(request.param)
    root = tmp_path_factory.mktemp("fresh")
    folder = export_model(save_model(root / "model.safetensors", seed=0), root / "export",
                          request.param)
    env = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                              str(folder / "requirements.txt")], env=clean_env(),
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.skip("cannot install the runner's requirements into a fresh virtualenv: "
                    + (install.stderr.strip().splitlines() or ["pip failed"])[-1])
    return {"root": root, "folder": folder, "python": str(python),
            "engine": FORMATS[request.param],
            "image": write_phantom(root / "case.nii.gz")}


def test_fresh_virtualenv_has_no_torch_nor_medseg(fresh):
    for module in ("torch", "medseg"):
        probe = subprocess.run([fresh["python"], "-c", f"import {module}"], capture_output=True,
                               cwd=fresh["root"], env=clean_env())
        assert probe.returncode != 0, module
    probe = subprocess.run([fresh["python"], "-c", f"import {fresh['engine']}, nibabel, scipy"],
                           capture_output=True, env=clean_env())
    assert probe.returncode == 0
    assert fresh["python"] != sys.executable


def test_runner_in_fresh_virtualenv_agrees_with_medseg_predict(fresh, tmp_path):
    out = tmp_path / "labels.nii.gz"
    result = run_runner(fresh["folder"], fresh["image"], out, "--tta",
                        python=fresh["python"], isolated=True)
    assert result.returncode == 0, result.stderr
    reference = medseg_prediction(fresh["root"] / "model.safetensors", fresh["image"], True)
    assert_agrees(out, fresh["image"], reference)
