"""End-to-end training: outputs, exact resume after SIGKILL, DDP with gloo, CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from medseg import models
from medseg.card import WindowSettings
from medseg.checkpoint import load_checkpoint
from medseg.training.resume import load_resume_state
from medseg.cli import main

from .training_helpers import REPO, tiny_config, weights_of, write_config


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _medseg(*args, timeout=300):
    cmd = [sys.executable, "-m", "medseg", "train", *map(str, args), "--no-progress"]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A config whose phantoms and cache are shared by all runs of this module."""
    folder = tmp_path_factory.mktemp("train")
    raw = tiny_config()
    raw["data"]["cache_dir"] = str(folder / "cache")
    return folder, write_config(folder / "tiny.yaml", raw)


def _rows(run):
    with open(run / "log.csv") as handle:
        return list(csv.DictReader(handle))


def test_killed_run_resumes_to_identical_weights(shared):
    folder, config = shared
    full, killed = folder / "full", folder / "killed"
    done = _medseg(config, "-o", full)
    assert done.returncode == 0, done.stderr
    crash = _medseg(config, "-o", killed, "--debug-kill-after-epoch", "1")
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    assert load_checkpoint(killed / "last.safetensors").epoch == 1
    assert len(_rows(killed)) == 1
    resumed = _medseg(config, "-o", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights_of(full / "last.safetensors"), weights_of(killed / "last.safetensors")
    assert set(a) == set(b)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 1e-6
    assert [r["train_loss"] for r in _rows(full)] == [r["train_loss"] for r in _rows(killed)]
    # outputs of a finished run
    ckpt = load_checkpoint(full / "best.safetensors")
    assert ckpt.card.labels == {0: "background", 1: "liver", 2: "spleen",
                                3: "kidney_left", 4: "kidney_right", 5: "aorta"}
    assert ckpt.card.window == WindowSettings((16, 16, 16), 0.25, "gaussian", 2)
    assert ckpt.card.channels == ("CT",)  # the manifest's modality names the one channel
    assert ckpt.card.preprocessing.to_dict()["orientation"] == "RAS"
    assert ckpt.train_config["train"]["epochs"] == 2 and "val_mean_dice" in ckpt.metrics
    rows = _rows(full)
    assert [r["epoch"] for r in rows] == ["1", "2"] and "dice_liver" in rows[0]
    assert (full / "curves.png").stat().st_size > 1000 and (full / "config.yaml").is_file()
    model = ckpt.build_model()
    assert model(__import__("torch").zeros(1, 1, 16, 16, 16)).shape == (1, 6, 16, 16, 16)
    # resume can extend a finished run beyond the configured epochs
    more = _medseg(config, "-o", killed, "--resume", "--set", "train.epochs=3")
    assert more.returncode == 0, more.stderr
    assert [r["epoch"] for r in _rows(killed)] == ["1", "2", "3"]
    assert load_resume_state(killed / "last.resume.safetensors")["step"] == 9


def test_ddp_two_ranks_keep_identical_parameters(shared):
    folder, config = shared
    run = folder / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medseg", "train", str(config), "-o", str(run), "--no-progress",
           "--debug-param-hashes"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = (run / "debug" / "params.rank0.txt").read_text().splitlines()
    rank1 = (run / "debug" / "params.rank1.txt").read_text().splitlines()
    assert len(rank0) == 2 * 3 and rank0 == rank1  # 2 epochs x 3 steps, same hash every step
    assert len(set(line.split()[2] for line in rank0)) == 6  # and the parameters did change
    assert load_checkpoint(run / "last.safetensors").epoch == 2
    assert sorted(p.name for p in run.glob("*.safetensors")) == [
        "best.safetensors", "last.resume.safetensors", "last.safetensors"]
    assert len(_rows(run)) == 2
    # the checkpoint equals rank 0's parameters after the last step
    state = weights_of(run / "last.safetensors")
    import hashlib

    net = models.build(load_checkpoint(run / "last.safetensors").card.model)
    digest = hashlib.sha256()
    for name, _ in net.named_parameters():
        digest.update(np.ascontiguousarray(state[name]).tobytes())
    assert digest.hexdigest() == rank0[-1].split()[2]


def test_cli_config_typo_is_one_line(tmp_path, capsys):
    raw = tiny_config()
    raw["train"]["learning_rate"] = 0.1
    path = write_config(tmp_path / "typo.yaml", raw)
    assert main(["train", str(path), "-o", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "typo.yaml" in err[0] and "'train.learning_rate'" in err[0]
    assert main(["train", str(write_config(tmp_path / "ok.yaml", tiny_config())), "-o",
                 str(tmp_path / "run2"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_time_budget_stops_after_an_epoch_and_still_validates(tmp_path, capsys):
    """--max-minutes: with a budget no epoch fits in, the run ends after epoch 1 of 4,
    validates it although val_every (3) is not due, and writes best + last checkpoints.
    ``--device auto`` is accepted as by predict and demo (it was refused before the one
    Runtime)."""
    raw = tiny_config(epochs=4, val_every=3)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    config = write_config(tmp_path / "tiny.yaml", raw)
    run = tmp_path / "run"
    code = main(["train", str(config), "-o", str(run), "--no-progress", "--device", "auto",
                 "--max-minutes", "0.00001"])
    assert code == 0
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1"]
    assert rows[0]["val_mean_dice"] not in ("", None)
    assert load_checkpoint(run / "best.safetensors").epoch == 1
    assert load_checkpoint(run / "last.safetensors").epoch == 1
    # the last validation chose the post-processing: its Dice without any is the logged
    # validation Dice (the same predictions), and the choice is in both cards
    chosen = json.loads((run / "postprocessing.json").read_text())
    assert chosen["mean_dice_without"] == pytest.approx(float(rows[0]["val_mean_dice"]),
                                                        rel=1e-5)  # log.csv rounds
    for name in ("best", "last"):
        card = load_checkpoint(run / f"{name}.safetensors").card
        assert card.postprocess.to_dict() == chosen["postprocess"]
    # --resume without a budget continues to the configured 4 epochs.
    assert main(["train", str(config), "-o", str(run), "--no-progress", "--resume"]) == 0
    assert [r["epoch"] for r in _rows(run)] == ["1", "2", "3", "4"]


def test_config_budget_is_a_contract_and_the_schedule_follows_the_clock(tmp_path):
    """``train.max_minutes`` (as ``medseg plan --time-budget`` writes it) stops the run like
    ``--max-minutes``; the smaller of the two holds; with the budget spent from the first
    step, the schedule's progress is the clock's (1): poly's rate is (1 - 1)^0.9 = 0."""
    raw = tiny_config(epochs=4, val_every=3)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["train"]["max_minutes"] = 0.00001
    config = write_config(tmp_path / "tiny.yaml", raw)
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run), "--no-progress",
                 "--max-minutes", "100"]) == 0
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == ["1"] and rows[0]["val_mean_dice"] not in ("", None)
    assert float(rows[0]["lr"]) == 0.0
    assert load_checkpoint(run / "last.safetensors").epoch == 1


def test_lr_follows_the_larger_of_the_step_and_the_clock():
    from medseg.config import TrainConfig
    from medseg.training.optim import lr_at

    cfg = TrainConfig(epochs=1, iterations_per_epoch=100, lr=1.0, schedule="poly",
                      poly_exponent=0.9)
    assert lr_at(10, cfg) == pytest.approx(0.9 ** 0.9)
    assert lr_at(10, cfg, time_fraction=0.05) == pytest.approx(0.9 ** 0.9)  # steps lead
    assert lr_at(10, cfg, time_fraction=0.5) == pytest.approx(0.5 ** 0.9)  # the clock leads
    assert lr_at(10, cfg, time_fraction=3.0) == 0.0  # over budget: the schedule's end


def test_last_validation_evidence_keeps_the_largest_component_where_it_raises_dice():
    """Hand case: a 2x2x2 cube of label 1 predicted exactly plus a far 1-voxel island
    (Dice 16/17 without, 1 with keep-largest) in one case; in the other, label 1 is exact
    and label 2 is two 1-voxel parts, predicted exactly (Dice 1 without, 2/3 with). Keep-largest is chosen for label 1 only; the island is 1 voxel of
    2 x 1 x 1 mm = 0.002 mL."""
    from types import SimpleNamespace

    from medseg.training.validation import PostprocessEvidence

    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    gt = np.zeros((8, 8, 8), np.uint8)
    gt[1:3, 1:3, 1:3] = 1
    pred = gt.copy()
    pred[7, 7, 7] = 1
    gt2, pred2 = gt.copy(), gt.copy()
    gt2[5, 5, 5] = gt2[5, 5, 7] = 2  # a structure of two separate parts, found exactly
    pred2[5, 5, 5] = pred2[5, 5, 7] = 2
    evidence = PostprocessEvidence([1, 2])
    evidence(SimpleNamespace(affine=affine), pred, gt)
    evidence(SimpleNamespace(affine=affine), pred2, gt2)
    assert evidence.dice[0][1] == pytest.approx((16 / 17, 1.0))
    assert evidence.dice[1][2] == pytest.approx((1.0, 2 / 3))
    assert evidence.components[0][1].false_positive_ml() == pytest.approx([0.002])
    choice = evidence.choose()
    assert choice.postprocess.largest_only == (1,)
    assert choice.dice_without[1] == pytest.approx((16 / 17 + 1) / 2)


def test_fill_budget_trains_past_the_planned_epochs_and_decays_with_the_clock(tmp_path,
                                                                                 monkeypatch):
    """``train.fill_budget`` (what ``medseg plan --time-budget`` writes): on a clock where
    every epoch takes 10 s and nothing else takes time, a 1-minute budget with 2 planned
    epochs trains 6 (after epoch k, k*10 + 10 > 60 first holds at k = 6), and each epoch's
    rate is poly of the clock's share alone: 0.01 * (1 - 10k/60)^0.9."""
    import types

    from medseg.training import loop

    clock = [1000.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    real_epoch = loop._Trainer._train_epoch

    def ten_seconds(self, epoch):
        loss = real_epoch(self, epoch)
        clock[0] += 10.0
        return loss

    monkeypatch.setattr(loop._Trainer, "_train_epoch", ten_seconds)
    raw = tiny_config(epochs=2, val_every=1, max_minutes=1.0, fill_budget=True)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    run = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path / "tiny.yaml", raw)), "-o", str(run),
                 "--no-progress"]) == 0
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    for k, row in enumerate(rows, start=1):
        assert float(row["lr"]) == pytest.approx(0.01 * (1 - 10 * k / 60) ** 0.9, rel=1e-5,
                                                 abs=1e-12)  # log.csv rounds
    # without fill_budget the 2 planned epochs are the schedule (steps lead: 3 of 6 at k=1)
    raw["train"]["fill_budget"] = False
    clock[0] = 1000.0
    other = tmp_path / "other"
    assert main(["train", str(write_config(tmp_path / "b.yaml", raw)), "-o", str(other),
                 "--no-progress"]) == 0
    assert [float(r["lr"]) for r in _rows(other)] == pytest.approx(
        [0.01 * (1 - 0.5) ** 0.9, 0.0], rel=1e-5, abs=1e-12)


def test_calibrate_ends_the_run_calibrated_and_its_time_is_reserved(tmp_path, monkeypatch):
    """``train.calibrate``: the run's cards carry the temperature and QC reference of
    ``calibration.json``, fitted with ``best`` on the validation case. Its time is kept in a
    budget: on a clock where an epoch trains 10 s and validates 5 s, a 1-minute budget stops
    after epoch k when 15(k-1) + 10 (spent) + 10 (the next epoch) + 2 x 5 (validations)
    + R > 60: with R = 5 x 5 s + 2 s x 1 case at k = 2 (at k = 1 no validation is known
    yet: 20 + 2 <= 60), without calibration (R = 0) at k = 4."""
    import types

    from medseg.checkpoint import load_checkpoint
    from medseg.training import loop

    assert (loop.CALIBRATION_VALIDATIONS, loop.CALIBRATION_CASE_S) == (5.0, 2.0)
    clock = [1000.0]
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    real_epoch, real_validate = loop._Trainer._train_epoch, loop.validate

    def ten_seconds(self, epoch):
        loss = real_epoch(self, epoch)
        clock[0] += 10.0
        return loss

    def five_seconds(*args, **kwargs):
        clock[0] += 5.0
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(loop._Trainer, "_train_epoch", ten_seconds)
    monkeypatch.setattr(loop, "validate", five_seconds)
    epochs = {}
    for calibrate in (True, False):
        raw = tiny_config(epochs=2, val_every=1, max_minutes=1.0, fill_budget=True,
                          calibrate=calibrate)
        raw["data"]["cache_dir"] = str(tmp_path / "cache")
        run = tmp_path / f"run_{calibrate}"
        clock[0] = 1000.0
        assert main(["train", str(write_config(tmp_path / f"{calibrate}.yaml", raw)), "-o",
                     str(run), "--no-progress"]) == 0
        epochs[calibrate] = [int(r["epoch"]) for r in _rows(run)]
        assert (run / "calibration.json").is_file() == calibrate
    assert epochs == {True: [1, 2], False: [1, 2, 3, 4]}
    run = tmp_path / "run_True"
    result = json.loads((run / "calibration.json").read_text())
    assert result["cases"] == 1
    for name in ("best.safetensors", "last.safetensors"):
        conf = load_checkpoint(run / name).card.confidence
        assert conf.temperature == pytest.approx(result["temperature"])
        assert conf.cohort is not None  # the training cohort stays beside it
        assert {str(k): v.dice_offset for k, v in conf.reference.items()} == pytest.approx(
            {k: v["dice_offset"] for k, v in result["reference"].items()})


def test_a_run_that_cannot_calibrate_still_succeeds_uncalibrated(tmp_path, monkeypatch, capsys):
    """Calibration refused (as for validation cases without any foreground) ends the run
    with its checkpoints, no calibration.json and one warning, not a failed command."""
    from medseg.checkpoint import load_checkpoint
    from medseg.errors import UsageError
    from medseg.inference import calibration

    def refuse(*args, **kwargs):
        raise UsageError("calibration needs labelled cases with foreground (predicted or true) "
                         "in at least one of them")

    monkeypatch.setattr(calibration, "calibrate", refuse)
    raw = tiny_config(epochs=1, calibrate=True)
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    run = tmp_path / "run"
    assert main(["train", str(write_config(tmp_path / "c.yaml", raw)), "-o", str(run),
                 "--no-progress"]) == 0
    assert not (run / "calibration.json").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not calibrated" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "best.safetensors is not calibrated: calibration needs labelled cases with foreground "
        "(predicted or true) in at least one of them")
    assert load_checkpoint(run / "best.safetensors").card.confidence.temperature == 1.0
