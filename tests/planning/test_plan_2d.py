"""nnU-Net's ``2d`` configuration as ``medseg plan`` writes it (``plan_2d.yaml``): its
pooling and patch against nnunetv2's own rules, the whole 2D plan against nnunetv2's
``ExperimentPlanner`` on the same dataset, and a tiny plan -> train -> predict on phantoms
whose predictions are per slice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.config import load_config
from medseg.data.phantom_dataset import PhantomConfig, write_phantom_dataset
from medseg.io import read_volume, write_volume
from medseg.planning import PlanOptions, make_plans, rules
from medseg.planning.design import design
from medseg.planning.render import plan_dict
from medseg.volume import Volume
from helpers import write_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: nnunet_model

#: nnU-Net's smallest feature map edge and "no limit" on poolings (its planner's arguments).
MIN_EDGE, NO_LIMIT = 4, 999999


@pytest.mark.parametrize("spacing, plane", [
    ((0.8, 0.8), (90, 70)),
    ((0.5, 1.2), (200, 64)),    # anisotropic in the slice: y waits for x
    ((1.0, 1.0), (13, 200)),    # one axis too short to pool more than once
])
def test_2d_pooling_and_patch_follow_nnunet(spacing, plane):
    topology = pytest.importorskip(
        "nnunetv2.experiment_planning.experiment_planners.network_topology")
    _, strides, kernels, patch, _ = topology.get_pool_and_conv_props(
        list(spacing), list(plane), MIN_EDGE, NO_LIMIT)
    pools = rules.pooling((*spacing, 4.0), (*plane, 1))
    assert [list(p[:2]) for p in pools] == [list(s) for s in strides[1:]]
    assert all(p[2] == 1 for p in pools)  # never along the slice axis
    assert list(rules.round_up((*plane, 1), rules.divisor(pools))[:2]) == list(patch)
    # nnU-Net's 2D kernels are 3 x 3 (medseg's 3 x 3 x 1) when the slice's spacings are
    # within 2x; otherwise nnU-Net starts with 1 along the coarse one, where medseg keeps
    # 3 (as its 3D plans keep 3 x 3 x 3)
    if max(spacing) / min(spacing) < 2:
        assert all(list(k) == [3, 3] for k in kernels)
    else:
        assert any(1 in k for k in kernels)


def test_2d_design_of_an_isotropic_volume_slices_the_last_axis():
    # ties between spacings: nnU-Net's transpose keeps its first array axis, which is
    # medseg's z (SimpleITK reads (z, y, x)); the slice is x-y, one voxel of z
    d = design("2d", (64, 48, 40), (1.0, 1.0, 1.0), (1, 2), 8 * 2**30, 64 * 48 * 40 * 10)
    assert d.layout == "2d" and d.slab_axis == 2 and d.patch == (64, 48, 1)
    assert d.pools == ((2, 2, 1), (2, 2, 1), (2, 2, 1))  # 48 -> 24 -> 12 -> 6
    # 5 % of 10 cases' voxels: 10 * 40 * 0.05 = 20 slices; the CPU caps at nnU-Net's 12
    assert d.batch_size == 20
    cpu = design("2d", (64, 48, 40), (1.0, 1.0, 1.0), (1, 2), 8 * 2**30, 64 * 48 * 40 * 10,
                 cpu=True)
    assert cpu.batch_size == 12


def _nnunet_plans(raw_root: Path, manifest_dir: Path, cases: int) -> dict:
    """nnunetv2's fingerprint and default ExperimentPlanner on the files of ``manifest_dir``
    (nnU-Net's raw layout: imagesTr/case<i>_0000.nii.gz, labelsTr/case<i>.nii.gz)."""
    nnunet_model = pytest.importorskip("nnunet_model")
    pytest.importorskip("nnunetv2")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
    )

    raw = raw_root / "nnUNet_raw" / "Dataset977_Plan2d"
    raw.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).symlink_to(manifest_dir / sub)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "box": 1, "corner": 2},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    with nnunet_model.nnunet_env(raw_root), nnunet_model.console_to(raw_root / "log.txt"):
        extract_fingerprints([977], num_processes=1, check_dataset_integrity=False,
                             show_progress_bar=False)
        plan_experiments([977])
    path = raw_root / "nnUNet_preprocessed" / "Dataset977_Plan2d" / "nnUNetPlans.json"
    return json.loads(path.read_text())


def test_2d_plan_matches_nnunets_experiment_planner(tmp_path):
    # anisotropic MR: 90 x 70 voxels of 0.8 mm in the slice, 12 slices of 4 mm; 10 cases so
    # that the batch (5 % of the dataset's voxels: 75600 * 10 * 0.05 / 7680 = 4.92 slices)
    # tells nnU-Net's rounding from a floor
    cases = 10
    manifest = write_dataset(tmp_path / "data", [(0.8, 0.8, 4.0)] * cases, (90, 70, 12))
    for path in (manifest.parent / "imagesTr").iterdir():  # no zero border for nnU-Net to crop
        image = read_volume(path)
        write_volume(Volume(np.asarray(image.array) + 1000.0, image.affine), path)
    nnunet = _nnunet_plans(tmp_path / "nnunet", manifest.parent, cases)["configurations"]["2d"]
    # nnU-Net's memory reference is its 8 GB GPU; medseg's cuda plan of 8 GB usable
    main_plan, plan_2d = make_plans(manifest, PlanOptions("cuda", gpu_memory_gb=8 / 0.85))
    assert main_plan.design.layout == "slab" and plan_2d.design.layout == "2d"
    d = plan_2d.design
    # nnU-Net's arrays are (z, y, x) and its 2D patch (y, x): medseg's (x, y, 1) reversed
    assert [d.patch[1], d.patch[0]] == nnunet["patch_size"]
    assert d.patch[2] == 1
    strides = nnunet["architecture"]["arch_kwargs"]["strides"][1:]
    assert [[p[1], p[0]] for p in d.pools] == [list(s) for s in strides]
    assert d.batch_size == nnunet["batch_size"] == 5
    assert list(plan_2d.spacing_mm[:2]) == pytest.approx(nnunet["spacing"][::-1])
    kwargs = plan_dict(plan_2d)["model"]["kwargs"]
    assert kwargs["kernel"] == [3, 3, 1] and kwargs["max_width"] == 512
    assert kwargs["depth"] == len(strides) + 1


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    # one spacing for every case, so the plan's spacing is the cases' own and nothing is
    # resampled: a slice of the prediction then depends on that slice of the input alone
    cfg = PhantomConfig(n_train=4, n_val=0, shape=[48, 40, 12], spacing_mm=[4.0, 4.0, 5.0])
    return write_phantom_dataset(cfg, tmp_path_factory.mktemp("phantoms"))


def test_2d_plan_trains_and_predicts_slice_by_slice(phantoms, tmp_path):
    plan_dir, run = tmp_path / "plan", tmp_path / "run"
    assert main(["plan", str(phantoms), "-o", str(plan_dir), "--device", "cpu"]) == 0
    cfg = load_config(plan_dir / "plan_2d.yaml")
    assert cfg.train.patch_size[2] == 1 and cfg.model.kwargs["kernel"] == [3, 3, 1]
    assert main(["train", str(plan_dir / "plan_2d.yaml"), "-o", str(run), "--device", "cpu",
                 "--no-progress", "--set", "train.epochs=2", "--set",
                 "train.iterations_per_epoch=3", "--set", "train.val_every=2"]) == 0
    image = read_volume(phantoms.parent / "imagesTr" / "phantom_000.nii.gz")
    changed = np.array(image.array, copy=True)
    changed[..., 0] = changed[..., 0][::-1, ::-1]  # another first slice
    inputs = tmp_path / "in"
    write_volume(image, inputs / "a.nii.gz")
    write_volume(Volume(changed, image.affine), inputs / "b.nii.gz")
    assert main(["predict", "-m", str(run), "-i", str(inputs), "-o", str(tmp_path / "out"),
                 "--device", "cpu", "--save-probabilities"]) == 0
    a = read_volume(tmp_path / "out" / "a.nii.gz")
    assert a.shape == image.shape[-3:] and np.allclose(a.affine, image.affine)
    pa = np.asarray(read_volume(_probabilities(tmp_path / "out", "a")).array)
    pb = np.asarray(read_volume(_probabilities(tmp_path / "out", "b")).array)
    # a 2D network: every other slice is predicted exactly as before; the first is not
    np.testing.assert_array_equal(pa[..., 1:], pb[..., 1:])
    assert not np.array_equal(pa[..., 0], pb[..., 0])


def _probabilities(folder: Path, case: str) -> Path:
    found = sorted(folder.glob(f"{case}*prob*"))
    assert found, sorted(p.name for p in folder.iterdir())
    return found[0]


def test_time_budgeted_2d_plan_trades_batch_for_steps(tmp_path, monkeypatch):
    # a modelled step (0.25 s per slice of the batch) so that the test does not depend on
    # the machine: 12 slices (the CPU cap; 5 % of the data would be 40) take 3 s, and an
    # hour holds 3600 / (3 s * 1.2 overhead) = 1000 < 4100 steps. The candidates' batches are
    # int(12 * 2^(-k/2)): 12, 8, 6, 4, 3, 2; only 2 slices (0.5 s: 6000 steps) fit, and the
    # whole slice stays the patch
    from medseg.planning import plan as plan_module

    manifest = write_dataset(tmp_path / "data", [(1.0, 1.0, 3.5)] * 20, (64, 64, 40))
    monkeypatch.setattr(plan_module, "_measure",
                        lambda plan, options, **_: 0.25 * plan.design.batch_size)
    _, plan_2d = make_plans(manifest, PlanOptions("cpu", time_budget_h=1.0))
    d = plan_2d.design
    assert d.layout == "2d" and d.patch == (64, 64, 1)
    assert d.batch_size == 2 and plan_2d.step_seconds == 0.5
    assert "batch 12 -> 2; the largest candidate whose measured step (0.50 s, fp32) fits " \
        "4100 steps in the budget (6000)" in plan_2d.reason
    # both plans share the budget: max_minutes counts the planning of both
    assert plan_2d.max_minutes == pytest.approx(60 - (plan_2d.plan_seconds + 30) / 60, abs=0.01)


def test_unknown_layout_names_the_closest(tmp_path, capsys):
    manifest = write_dataset(tmp_path / "data", [(1.0, 1.0, 1.0)], (8, 8, 8))
    assert main(["plan", str(manifest), "-o", str(tmp_path / "plan"), "--layout", "2D"]) == 2
    assert "unknown layout '2D'" in capsys.readouterr().err
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("spacing, budget_h, screened, why", [
    # nnU-Net's test: coarsest spacing > 3 x the next coarsest (its has_aniso_spacing)
    ((0.8, 0.8, 4.0), 1.0, True, "median spacing 0.8x0.8x4 mm is highly anisotropic "
     "(coarsest > 3 x the next, nnU-Net's criterion): medseg train screens slab and 2d"),
    ((1.0, 1.0, 1.25), 1.0, False, "no screening against 2d: median spacing 1x1x1.25 mm is "
     "not highly anisotropic"),
    # a slab (largest / smallest spacing 8 > 3), but 4 <= 3 x 1.5: not by nnU-Net's test
    ((0.5, 1.5, 4.0), 1.0, False, "no screening against 2d: median spacing 0.5x1.5x4 mm is "
     "not highly anisotropic"),
    ((0.8, 0.8, 4.0), None, False, "no screening against 2d: no --time-budget"),
])
def test_plan_screens_2d_where_the_data_is_highly_anisotropic(tmp_path, monkeypatch, spacing,
                                                               budget_h, screened, why):
    from medseg.planning import plan as plan_module
    from medseg.planning import write_plan
    from medseg.planning.render import format_summary
    from medseg.training.screening import load_candidates

    monkeypatch.setattr(plan_module, "_measure",
                        lambda plan, options, **_: 0.25 * plan.design.batch_size)
    manifest = write_dataset(tmp_path / "data", [spacing] * 4, (48, 40, 12))
    out = tmp_path / "plan"
    plan = write_plan(manifest, out, PlanOptions("cpu", time_budget_h=budget_h))
    assert plan.design.layout == ("slab" if max(spacing) / min(spacing) > 3 else "3d")
    assert why in plan.screen_reason
    assert f"selection: {plan.screen_reason}" in format_summary(plan).splitlines()
    cfg = load_config(out / "plan.yaml")
    if not screened:
        assert cfg.train.select is None and plan.screen == ()
        assert f"select: null  # {plan.screen_reason}" in (out / "plan.yaml").read_text()
        return
    assert cfg.train.select.candidates == [str(out / "plan_2d.yaml")]
    assert cfg.train.select.screen_fraction == rules.SCREEN_FRACTION == 0.2
    # the two plans train and validate on one split and grid: medseg train can screen them
    names = [c.name for c in load_candidates(cfg, tmp_path / "run")]
    assert names == ["plan", "plan_2d"]
    assert load_config(out / "plan_2d.yaml").train.select is None
