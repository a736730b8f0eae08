"""``medseg demo`` and :mod:`medseg.demo`: time budget, the whole run on tiny phantoms.

The demo's phantom cohort is written by medseg.data.phantom_dataset (tests/data/).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.cli import main
from medseg.demo import default_config_path, run_demo
from medseg.errors import ConfigError, UsageError

REPO = Path(__file__).resolve().parent.parent

# A cohort and network small enough for a CPU smoke test in well under a minute.
TINY = [
    "data.phantom.shape=[32,32,24]", "data.phantom.spacing_mm=[9,9,11]",
    "data.phantom.n_train=2", "data.phantom.n_val=1",
    "train.patch_size=[32,32,24]", "inference.roi_size=[32,32,24]",
    "model.kwargs.depth=3",
]


# -- config and arguments ----------------------------------------------------------------------
def test_default_config_is_the_repository_pipeline():
    assert default_config_path() == REPO / "pipelines" / "phantom_quick.yaml"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"minutes": 0}, "minutes must be a positive number, got 0"),
        ({"minutes": float("nan")}, "minutes must be a positive number"),
        ({"n_test": 0}, "n_test must be an integer >= 1, got 0"),
        ({"device": "gpu"}, "device 'gpu': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, kwargs, match):
    with pytest.raises(UsageError, match=re.escape(match)):
        run_demo(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_config_without_phantoms_is_refused(tmp_path):
    config = tmp_path / "manifest.yaml"
    config.write_text("data: {manifest: dataset.json}\n")
    with pytest.raises(ConfigError, match="needs a 'data.phantom' section") as info:
        run_demo(tmp_path / "out", config=config)
    assert info.value.path == str(config)


def test_cli_usage_error_is_one_line(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "o"), "--minutes", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "medseg: error: minutes must be a positive number, got -1.0\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_gpu_is_a_usage_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


# -- the whole demo ----------------------------------------------------------------------------
def _table_rows(stdout: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("liver", "spleen", "kidney_left", "kidney_right",
                                            "aorta"):
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def test_demo_smoke_on_tiny_phantoms(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--minutes", "0.15", "--test-cases", "2",
            "--device", "cpu", "--no-progress"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    stdout = capsys.readouterr().out

    results = out / "evaluation" / "results.csv"
    for path in (results, out / "evaluation" / "summary.csv", out / "report.html",
                 out / "run" / "best.safetensors", out / "data" / "dataset.json"):
        assert path.is_file(), path
        assert str(path) in stdout or path.name == "dataset.json"
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert predictions == ["phantom_003.nii.gz", "phantom_004.nii.gz"]
    pred = nib.load(out / "predictions" / "phantom_003.nii.gz")
    image = nib.load(out / "data" / "imagesTs" / "phantom_003.nii.gz")
    assert pred.shape == image.shape and np.allclose(pred.affine, image.affine)

    # the printed table is the summary's per-label Dice and HD95 means
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    table = _table_rows(stdout)
    assert sorted(table) == sorted(["liver", "spleen", "kidney_left", "kidney_right", "aorta"])
    for group in summary["labels"].values():
        dice = group["metrics"]["dice"]["mean"]
        assert table[group["label_name"]][0] == f"{dice:.4f}"
    assert summary["n_cases"] == 2
    assert re.search(r"^mean\s+\d\.\d{4}$", stdout, flags=re.M)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count('<img id="overlay-') == 2
    settings = json.loads((out / "data" / "dataset.json").read_text())["phantom_settings"]
    assert settings["n_test"] == 2 and settings["shape"] == [32, 32, 24]
    config = (out / "run" / "config.yaml").read_text()
    assert str(out / "data" / "dataset.json") in config  # trained on the demo's own cohort
