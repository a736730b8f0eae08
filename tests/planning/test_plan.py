"""medseg plan on datasets of known geometry: the spacing, normalisation and pooling the
rules imply, worked out by hand; the YAML loads as a pipeline config; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.cli import main
from medseg.config import load_config
from medseg.data.manifest import load_manifest, read_case
from medseg.data.phantom_dataset import PhantomConfig, write_phantom_dataset
from medseg.errors import DataError, UsageError
from medseg.planning import PlanOptions, compute_fingerprint, make_plan, render, rules, write_plan
from helpers import write_dataset

CPU = PlanOptions(device="cpu")


@pytest.fixture(scope="module")
def ct_manifest(tmp_path_factory):
    # 24 x 24 x 16 = 9216 voxels per case: fewer than the 10000 sampled, so every
    # foreground voxel is in the statistics and numpy over all of them is the oracle
    cfg = PhantomConfig(n_train=3, n_val=0, shape=[24, 24, 16], spacing_mm=[2.0, 2.0, 2.0])
    return write_phantom_dataset(cfg, tmp_path_factory.mktemp("ct"))


def _foreground(manifest_path, channel=0):
    values = []
    for case in load_manifest(manifest_path).cases:
        image, label = read_case(case)
        values.append(np.asarray(image.array[channel], np.float64)[np.asarray(label.array) > 0])
    return np.concatenate(values)


def test_isotropic_ct_plan(ct_manifest, tmp_path):
    plan = write_plan(ct_manifest, tmp_path / "plan", CPU)
    fg = _foreground(ct_manifest)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert plan.spacing_mm == (2.0, 2.0, 2.0)  # the median (every case is 2 mm)
    assert plan.intensity["mode"] == "ct"
    np.testing.assert_allclose(plan.intensity["window"], [lo, hi], atol=0.01)
    np.testing.assert_allclose(plan.intensity["mean_std"], [fg.mean(), fg.std()], atol=1e-3)
    # 24 x 24 x 16 -> 12 x 12 x 8 -> 6 x 6 x 4: two poolings of every axis
    assert plan.design.layout == "3d" and plan.design.patch == (24, 24, 16)
    assert plan.design.pools == ((2, 2, 2), (2, 2, 2))
    cfg = load_config(tmp_path / "plan" / "plan.yaml")
    assert cfg.preprocessing["spacing_mm"] == [2.0, 2.0, 2.0]
    assert cfg.model.kwargs["pool"] == [[2, 2, 2], [2, 2, 2]] and cfg.model.kwargs["depth"] == 3
    assert cfg.train.patch_size == [24, 24, 16] and cfg.train.batch_size == 2
    assert cfg.train.deep_supervision and cfg.train.schedule == "poly"
    assert cfg.data.manifest == str(ct_manifest.resolve())
    text = (tmp_path / "plan" / "plan.yaml").read_text()
    assert all("  # " in line for line in text.splitlines() if line.startswith("  "))
    assert (tmp_path / "plan" / "fingerprint.json").is_file()


def test_ct_normalisation_of_the_plan_zscores_the_foreground(ct_manifest):
    from medseg.transforms import Preprocessing

    plan = make_plan(ct_manifest, CPU)
    pre = Preprocessing.from_config({"intensity": plan.intensity})
    out = []
    for case in load_manifest(ct_manifest).cases:
        image, label = read_case(case)
        mask = np.asarray(label.array) > 0
        out.append(pre.apply(image).image.array[0][mask])
    out = np.concatenate(out)
    # clipping moves only the 1 % tails: mean ~0, std ~1 over the training foreground
    assert abs(out.mean()) < 0.02 and abs(out.std() - 1.0) < 0.03


def test_anisotropic_mr_plan(tmp_path):
    manifest = write_dataset(tmp_path / "aniso", [(0.7, 0.7, 5.0), (0.7, 0.7, 5.0),
                                                  (0.7, 0.7, 4.0)], (64, 64, 8))
    plan = make_plan(manifest, CPU)
    # z: median 5 > 3 x 0.7 and 8 x 3 < 64 voxels -> 10th percentile of (4, 5, 5) = 4.2
    assert plan.spacing_mm == (0.7, 0.7, 4.2)
    assert plan.intensity == {"mode": "mr"}
    # resampled z: 8 * 5 / 4.2 = 9.5 -> 10 (twice), 8 * 4 / 4.2 = 7.6 -> 8: median 10
    assert plan.median_shape == (64, 64, 10)
    # anisotropy 5 / 0.7 > 3: thin slab of 5 slices, z never pooled; x, y 64 -> 4
    assert plan.design.layout == "slab" and plan.design.slab_axis == 2
    assert plan.design.patch == (64, 64, 5)
    assert plan.design.pools == ((2, 2, 1),) * 4


def test_multichannel_mr_fingerprint_and_plan(tmp_path):
    manifest = write_dataset(tmp_path / "mc", [(1.0, 1.0, 1.0)] * 2, (16, 16, 16),
                             channel_names=("T1", "T2"))
    fp = compute_fingerprint(load_manifest(manifest))
    assert fp.channel_names == ("T1", "T2") and not fp.is_ct
    for c, stats in enumerate(fp.channels):
        fg = _foreground(manifest, c)
        np.testing.assert_allclose([stats.mean, stats.std], [fg.mean(), fg.std()], rtol=1e-9)
    # label 1: an 8^3 box = 512 voxels of 4096, at 1 mm^3: one component of 0.512 mL
    box = fp.classes[0]
    assert box.voxel_fraction == pytest.approx(8**3 / 16**3)
    assert box.components_median == 1 and box.component_ml_median == pytest.approx(0.512)
    plan = make_plan(manifest, CPU)
    assert plan.intensity == {"mode": "mr"} and plan.spacing_mm == (1.0, 1.0, 1.0)
    # 16^3 -> 8^3 -> 4^3
    assert plan.design.patch == (16, 16, 16) and plan.design.pools == ((2, 2, 2), (2, 2, 2))


def test_cases_with_different_channel_counts(tmp_path):
    manifest = write_dataset(tmp_path / "ch", [(1.0, 1.0, 1.0)] * 2, (16, 16, 16),
                             channels_per_case=[1, 2])
    with pytest.raises(DataError, match="case1_0000.nii.gz.*2 image channel.*same channels"):
        make_plan(manifest, CPU)


def test_label_values_the_manifest_does_not_list(tmp_path):
    manifest = write_dataset(tmp_path / "lab", [(1.0, 1.0, 1.0)] * 2, (16, 16, 16),
                             labels={"0": "background", "1": "box"})
    with pytest.raises(DataError, match=r"labelsTr/case0.nii.gz.*\[2\].*add them to 'labels'"):
        make_plan(manifest, CPU)


def _cli_error(capsys, *argv) -> str:
    """The one error line of ``medseg plan ARGV`` (exit code 2: usage)."""
    code = main(["plan", *map(str, argv)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medseg: error")]
    assert code == 2 and len(errors) == 1
    return errors[0]


def test_gpu_budget_below_the_smallest_network(ct_manifest, tmp_path, capsys):
    line = _cli_error(capsys, ct_manifest, "-o", tmp_path, "--device", "cuda",
                      "--gpu-memory-gb", "0.001")
    assert str(ct_manifest) in line and "give --gpu-memory-gb" in line


def test_time_budget_too_small_for_one_epoch(ct_manifest, tmp_path, capsys):
    line = _cli_error(capsys, ct_manifest, "-o", tmp_path, "--device", "cpu",
                      "--time-budget", "1e-6")
    assert str(ct_manifest) in line and "one epoch is 50: give --time-budget" in line
    with pytest.raises(UsageError, match="time-budget"):
        make_plan(ct_manifest, PlanOptions(device="cpu", time_budget_h=-1.0))


def test_time_budget_fits_the_schedule(ct_manifest):
    from medseg.planning.plan import START_MARGIN_S

    plan = make_plan(ct_manifest, PlanOptions(device="cpu", time_budget_h=0.1))
    steps = plan.epochs * plan.iterations_per_epoch
    # the contract: 360 s less planning and the start margin is medseg train's wall time
    run_s = 360.0 - plan.plan_seconds - START_MARGIN_S
    assert plan.max_minutes == round(run_s / 60, 2) and 0 < plan.plan_seconds < 360
    # step_time.plan_training: total = budget / (step time * 1.2 overhead) steps, cut into
    # whole epochs of total // epochs steps (so fewer than ``epochs`` steps are lost); the
    # data cache (as long as the fingerprint) and the validations the budget holds
    # (rules.validations_in, at most a VALIDATION_SHARE of it) come out of it first
    budget = run_s - plan.cache_seconds
    validations = rules.validations_in(budget, plan.validation_seconds)
    train = max(budget - validations * plan.validation_seconds,
                budget * (1 - rules.VALIDATION_SHARE))
    total = int(train / (plan.step_seconds * 1.2))
    assert total - plan.epochs < steps <= total and plan.iterations_per_epoch >= 50
    text = render.plan_yaml(plan)
    assert f"max_minutes: {plan.max_minutes}  # --time-budget 0.1 h less" in text


def test_time_budget_counts_the_validations(tmp_path, monkeypatch):
    """la_mri-like data, a modelled step (SECONDS_PER_GIB x memory): training steps and
    validations together fit the hour, validations take at most a quarter of it, and the
    YAML says how many."""
    from medseg.planning import plan as plan_module

    manifest = write_dataset(tmp_path / "la", [(0.625, 0.625, 1.25)] * 10, (320, 320, 88))
    monkeypatch.setattr(plan_module, "_measure", _modelled_step)
    plan = make_plan(manifest, PlanOptions(device="cpu", time_budget_h=1.0))
    step = plan.step_seconds
    assert step == _modelled_step(plan)
    validations = -(-plan.epochs // plan.val_every)
    assert 1 <= validations <= 5
    # 10 cases -> 2 validation cases; windows at overlap 0.5 of the planned patch
    windows = np.prod([1 if n <= p else -(-(n - p) // (p // 2)) + 1
                       for n, p in zip(plan.median_shape, plan.design.patch)])
    assert plan.validation_seconds == pytest.approx(2 * windows * step / 3 / 2)
    training = plan.epochs * plan.iterations_per_epoch * step * 1.2
    assert training + validations * plan.validation_seconds + plan.cache_seconds \
        <= plan.max_minutes * 60 < 3600.0 - plan.plan_seconds
    assert training > 0.7 * 3600.0
    text = render.plan_yaml(plan)
    assert f"val_every: {plan.val_every}  # {validations} validations of about" in text


SECONDS_PER_GIB = 7.4
"""Step-time model of the tests: 2 CPU cores trained la_mri's 40^3 batch-2 patch
(0.34 GiB estimated) in 2.51 s per step."""


def _modelled_step(plan, options=None, **_):
    """Seconds of a (mocked) fp32 step: proportional to the estimated training memory, so
    that the tests are fast and do not depend on the machine (the real measurement is
    medseg.planning.step_time's)."""
    return SECONDS_PER_GIB * plan.design.memory_bytes / 2**30


def test_cpu_time_budget_coarsens_the_spacing_for_context(tmp_path, monkeypatch, capsys):
    # like la_mri: 320 x 320 x 88 voxels of 0.625 x 0.625 x 1.25 mm, one MR channel. The
    # step time is modelled (proportional to the estimated memory) so the test is fast and
    # does not depend on the machine; the real measurement is medseg.planning.step_time's.
    from medseg.planning import plan as plan_module

    manifest = write_dataset(tmp_path / "la", [(0.625, 0.625, 1.25)] * 2, (320, 320, 88))
    monkeypatch.setattr(plan_module, "_measure", _modelled_step)
    assert main(["plan", str(manifest), "-o", str(tmp_path / "plan"), "--device", "cpu",
                 "--time-budget", "1"]) == 0
    summary = capsys.readouterr().out
    cfg = load_config(tmp_path / "plan" / "plan.yaml")
    spacing, patch = cfg.preprocessing["spacing_mm"], cfg.train.patch_size
    # coarser than the median on every axis, by whole 1.5x steps (nnU-Net's 3d_lowres rule
    # grows every axis when the coarsest is at most 2x the finest)
    steps = round(np.log(spacing[0] / 0.625) / np.log(1.5))
    assert steps >= 1
    np.testing.assert_allclose(spacing, np.array([0.625, 0.625, 1.25]) * 1.5**steps, rtol=1e-5)
    median = [round(n * s / t) for n, s, t in zip((320, 320, 88), (0.625, 0.625, 1.25),
                                                    spacing)]
    assert all(p >= m * rules.MIN_CONTEXT for p, m in zip(patch, median)), (patch, median)
    # one step less would not have given the context: that is why it stopped there
    text = (tmp_path / "plan" / "plan.yaml").read_text()
    line = next(t for t in text.splitlines() if t.startswith("  spacing_mm:"))
    assert f"coarsened {steps} x 1.5 for context" in line and "< 50%" in line
    # a time-budgeted CPU plan halves nnU-Net's width (more steps in the hour)
    assert cfg.model.kwargs["width"] == 16
    assert "spacing: at 0.625x0.625x1.25 mm" in summary
    # the GPU plan of the same data stays at the median spacing
    gpu = make_plan(manifest, PlanOptions(device="cuda", gpu_memory_gb=40))
    assert gpu.spacing_mm == (0.625, 0.625, 1.25) and gpu.spacing_reason == ""
    assert gpu.design.width == 32


def test_time_budget_trains_the_largest_candidate_whose_measured_step_fits(tmp_path,
                                                                           monkeypatch):
    """la_mri-like data, a step modelled as SECONDS_PER_GIB x the estimated memory: the plan
    trains the largest candidate (2^(-k/2) of the memory-fitted network's memory) whose step
    fits MIN_STEPS steps of the hour (3600 / (step x 1.2)), its step is the schedule's, the
    larger candidates timed did not fit, and nothing over PROBE_BYTES was timed (la_mri's
    7 GiB memory-fitted patch took 26-53 s a step and made two plans disagree)."""
    import medseg.runtime
    from medseg.planning import plan as plan_module

    def seconds(memory):
        return SECONDS_PER_GIB * memory / 2**30

    timed = []

    def measure(plan, options, **_):
        timed.append(plan.design.memory_bytes)
        return seconds(plan.design.memory_bytes)

    monkeypatch.setattr(medseg.runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(plan_module, "_measure", measure)
    manifest = write_dataset(tmp_path / "la", [(0.625, 0.625, 1.25)] * 2, (320, 320, 88))
    fitted = make_plan(manifest, PlanOptions(device="cpu")).design.memory_bytes
    plan = make_plan(manifest, PlanOptions(device="cpu", time_budget_h=1.0))
    limit = 3600 / (1.2 * plan_module.MIN_STEPS)  # seconds a step
    chosen = plan.design.memory_bytes
    assert plan.step_seconds == seconds(chosen) <= limit
    assert max(timed) <= plan_module.PROBE_BYTES < fitted
    larger = [m for m in timed if m > chosen]
    assert larger and all(seconds(m) > limit for m in larger)
    steps = int(3600 / (1.2 * seconds(chosen)))
    assert (f"the largest candidate whose measured step ({seconds(chosen):.2f} s, fp32) fits "
            f"{plan_module.MIN_STEPS} steps in the budget ({steps})") in plan.reason


@pytest.mark.parametrize("factor", [1.4, 0.7, 3.0, 0.3])
def test_a_probe_near_the_line_trains_and_only_a_clearly_faster_or_slower_machine_moves(
        tmp_path, monkeypatch, factor):
    """la_mri-like data, a step modelled proportional to the estimated memory and scaled so
    that the probe (the first candidate of at most PROBE_BYTES) takes ``factor`` x the
    MIN_STEPS line (3600 / (1.2 x MIN_STEPS) s): within STEADY (1.5x) either way the probe
    trains and nothing else is timed (two plans on a drifting host agree); a machine 3x
    slower trains a smaller candidate that fits the line, one 3.3x faster a larger one,
    the largest that fits (the next larger timed does not)."""
    import medseg.runtime
    from medseg.planning import plan as plan_module

    manifest = write_dataset(tmp_path / "la", [(0.625, 0.625, 1.25)] * 2, (320, 320, 88))
    limit = 3600 / (1.2 * plan_module.MIN_STEPS)
    probe = {}
    timed = []

    def measure(plan, options, **_):
        memory = plan.design.memory_bytes
        probe.setdefault("bytes", memory)  # the first one timed is the probe
        timed.append(memory)
        return factor * limit * memory / probe["bytes"]

    monkeypatch.setattr(medseg.runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(plan_module, "_measure", measure)
    plan = make_plan(manifest, PlanOptions(device="cpu", time_budget_h=1.0))
    assert probe["bytes"] <= plan_module.PROBE_BYTES
    chosen = plan.design.memory_bytes
    if 1 / plan_module.STEADY <= factor <= plan_module.STEADY:
        assert timed == [probe["bytes"]] and chosen == probe["bytes"]
        assert plan.step_seconds == pytest.approx(factor * limit)
        assert "the probe (the first candidate of at most 0.5 GiB)" in plan.reason
        return
    assert plan.step_seconds <= limit and (chosen < probe["bytes"]) == (factor > 1)
    larger = [m for m in timed if m > chosen]
    assert larger and all(factor * limit * m / probe["bytes"] > limit for m in larger)
    assert "the largest candidate whose measured step" in plan.reason


@pytest.mark.parametrize("native, ratio, amp", [(True, 0.4, True), (True, 0.9, None),
                                                (False, 0.4, None)])
def test_cpu_plan_trains_in_bf16_where_it_is_measured_faster(tmp_path, monkeypatch, native,
                                                              ratio, amp):
    """A modelled fp32 step: a bf16 step of 0.4 of it (2.5x, above BF16_GAIN = 1.25) makes
    the plan train in bf16 with a schedule of bf16 steps; 0.9 of it (1.1x) keeps fp32; a CPU
    without native bf16 is never timed in bf16."""
    import medseg.runtime
    from medseg.planning import plan as plan_module

    timed = []

    def measure(plan, options, **_):
        timed.append(plan.amp)
        return _modelled_step(plan) * (ratio if plan.amp else 1.0)

    manifest = write_dataset(tmp_path / "la", [(0.625, 0.625, 1.25)] * 10, (320, 320, 88))
    monkeypatch.setattr(medseg.runtime, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(plan_module, "_measure", measure)
    plan = write_plan(manifest, tmp_path / "plan", PlanOptions(device="cpu", time_budget_h=1.0,
                                                               plan_2d=False))
    cfg = load_config(tmp_path / "plan" / "plan.yaml")
    assert cfg.train.amp is amp
    assert (True in timed) is native
    fp32 = _modelled_step(plan)
    step = fp32 * ratio if amp else fp32
    assert plan.step_seconds == step
    steps = cfg.train.epochs * cfg.train.iterations_per_epoch
    assert 0.7 * 3600 < steps * step * 1.2 < cfg.train.max_minutes * 60
    line = next(t for t in (tmp_path / "plan" / "plan.yaml").read_text().splitlines()
                if t.startswith("  amp:"))
    if amp:
        assert f"bf16 autocast: {step:.2f} s per step against {fp32:.2f} s in fp32" in line
        assert "2.5x the steps" in line
    elif native:
        assert (f"fp32: bf16 autocast took {fp32 * ratio:.2f} s per step against {fp32:.2f} s"
                in line)
    else:
        assert "fp32 on the CPU" in line
