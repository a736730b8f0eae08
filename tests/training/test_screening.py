"""``train.select``: a slab config and its 2D candidate screened on one split within the
budget, the better continued (``medseg.training.screening``), on an injected clock."""

from __future__ import annotations

import csv
import json
import math
import types

import pytest

from medseg.checkpoint import load_checkpoint
from medseg.cli import main

from .training_helpers import tiny_config, write_config

EPOCH_S = 10.0  # seconds one epoch takes on the injected clock (nothing else takes any)
LR = 0.003


def _rows(run):
    with open(run / "log.csv") as handle:
        return list(csv.DictReader(handle))


def _configs(folder, budget_min=1.5, fraction=2 / 3):
    """plan.yaml (a 5-slice slab network) naming plan_2d.yaml (a per-slice one) as its
    candidate, on anisotropic phantoms (4 x 4 x 16 mm)."""
    def config(patch, kernel):
        raw = tiny_config(epochs=2, val_every=1, max_minutes=budget_min, fill_budget=True,
                          patch_size=patch, iterations_per_epoch=3, lr=LR)
        raw["data"]["phantom"].update(shape=[24, 24, 8], spacing_mm=[4.0, 4.0, 16.0], n_val=1)
        raw["model"]["kwargs"].update(kernel=kernel, pool=[[2, 2, 1]])
        raw["inference"]["roi_size"] = patch
        raw["train"]["augment"] = {"enabled": False}
        return raw

    plan_2d = write_config(folder / "plan_2d.yaml", config([16, 16, 1], [3, 3, 1]))
    raw = config([16, 16, 5], [3, 3, 3])
    raw["train"]["select"] = {"candidates": ["plan_2d.yaml"], "screen_fraction": fraction}
    return write_config(folder / "plan.yaml", raw), plan_2d


@pytest.fixture
def clock(monkeypatch):
    """Every training epoch takes ``EPOCH_S`` on a clock shared by the loop and the
    screening; nothing else takes time."""
    from medseg.training import loop, screening

    now = [1000.0]
    fake = types.SimpleNamespace(monotonic=lambda: now[0])
    monkeypatch.setattr(loop, "time", fake)
    monkeypatch.setattr(screening, "time", fake)
    real_epoch = loop._Trainer._train_epoch

    def timed(self, epoch):
        loss = real_epoch(self, epoch)
        now[0] += EPOCH_S
        return loss

    monkeypatch.setattr(loop._Trainer, "_train_epoch", timed)
    return now


def test_screening_continues_the_higher_dice_within_the_budget(tmp_path, clock):
    """Budget 90 s, screening 2/3 of it: 30 s each, so 3 epochs each (after epoch k the
    loop stops when 10k + 10 > 30). The winner's whole schedule is W = 90 - 30 = 60 s and
    its continuation has the 30 s left: 3 more epochs, 6 in all, ending at 90 s. Its
    learning rate is poly of 10k / 60 at every epoch k, screening and continuation alike."""
    config, plan_2d = _configs(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run), "--no-progress", "--device", "cpu"]) == 0
    selection = json.loads((run / "selection.json").read_text())
    dice = {c["name"]: c["val_mean_dice"] for c in selection["candidates"]}
    assert set(dice) == {"plan", "plan_2d"}
    winner = selection["winner"]
    loser = "plan_2d" if winner == "plan" else "plan"
    # the choice is the argmax of the recorded values (ties: the plan's own)
    assert winner == ("plan_2d" if dice["plan_2d"] > dice["plan"] else "plan")
    # the recorded values are the runs' own: their last screening validation, and the best
    screened = {winner: _rows(run)[:3], loser: _rows(run / "screen" / loser)}
    best = {c["name"]: c["best_val_mean_dice"] for c in selection["candidates"]}
    for name, rows in screened.items():
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
        assert dice[name] == pytest.approx(float(rows[-1]["val_mean_dice"]), rel=1e-5)
        assert best[name] == pytest.approx(max(float(r["val_mean_dice"]) for r in rows),
                                           rel=1e-5)
    assert [c["minutes"] for c in selection["candidates"]] == [0.5, 0.5]
    assert len(selection["validation_cases"]) == 1
    # the winner continued from its screening state: 9 epochs, one schedule over 90 s
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    for k, row in enumerate(rows, start=1):
        assert float(row["lr"]) == pytest.approx(LR * (1 - EPOCH_S * k / 60) ** 0.9,
                                                 rel=1e-5, abs=1e-12)
    assert int(rows[-1]["step"]) == 6 * 3  # 3 steps an epoch: nothing was trained twice
    # the whole run stayed within the budget on the clock
    assert selection["total_minutes"] <= 1.5 and selection["total_minutes"] == pytest.approx(1.5)
    assert clock[0] - 1000.0 == pytest.approx(90.0)
    # predict -m RUN finds the winner's network
    best = load_checkpoint(run / "best.safetensors")
    patch = [16, 16, 1] if winner == "plan_2d" else [16, 16, 5]
    assert list(best.card.window.roi_size) == patch
    assert best.train_config["train"]["patch_size"] == patch
    assert selection["winner_config"] == str(plan_2d if winner == "plan_2d" else config)
    assert not (run / "screen" / winner).exists()
    assert (run / "screen" / loser / "best.safetensors").is_file()
    # --resume continues the winner like any run (15 more seconds: one epoch)
    assert main(["train", str(config), "-o", str(run), "--no-progress", "--device", "cpu",
                 "--resume", "--max-minutes", "0.25"]) == 0
    assert [int(r["epoch"]) for r in _rows(run)] == list(range(1, 8))
    assert load_checkpoint(run / "last.safetensors").train_config["train"]["patch_size"] == patch


@pytest.mark.parametrize("flag, plan, plan_2d", [
    ([], "bf16", "fp32"),
    (["--no-amp"], "fp32", "fp32"),
])
def test_each_candidate_trains_in_its_own_precision_unless_the_command_line_overrides(
        tmp_path, clock, monkeypatch, flag, plan, plan_2d):
    """plan.yaml says ``train.amp: true`` and plan_2d.yaml ``false``: on the CPU bf16
    autocast and fp32 (``medseg.runtime``'s table), screened and continued alike;
    ``--no-amp`` sets both."""
    import yaml

    from medseg.training import screening

    config, _ = _configs(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["train"]["amp"] = True
    write_config(config, raw)
    seen = []
    real = screening.train

    def recording(cfg, run_dir, options, runtime):
        seen.append((run_dir.name, runtime.precision))
        return real(cfg, run_dir, options, runtime)

    monkeypatch.setattr(screening, "train", recording)
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run), "--no-progress", "--device", "cpu",
                 *flag]) == 0
    winner = json.loads((run / "selection.json").read_text())["winner"]
    precision = {"plan": plan, "plan_2d": plan_2d}
    assert seen == [("plan", plan), ("plan_2d", plan_2d), ("run", precision[winner])]


def test_resume_before_a_choice_has_nothing_to_resume(tmp_path, capsys):
    config, _ = _configs(tmp_path)
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--resume"]) == 2
    assert "nothing to resume: no selection.json" in capsys.readouterr().err


def test_without_validation_cases_the_plan_trains_alone(tmp_path, clock):
    """No validation case to compare on: no screening; the plan's own config has the whole
    budget (15 s: one epoch of 10 s, as 10 + 10 > 15)."""
    import yaml

    config, plan_2d = _configs(tmp_path)
    for path in (config, plan_2d):
        raw = yaml.safe_load(path.read_text())
        raw["data"]["phantom"]["n_val"] = 0
        raw["data"]["val_fraction"] = 0.0
        write_config(path, raw)
    run = tmp_path / "run"
    assert main(["train", str(config), "-o", str(run), "--no-progress", "--device", "cpu",
                 "--max-minutes", "0.25"]) == 0
    assert [int(r["epoch"]) for r in _rows(run)] == [1]
    assert not (run / "screen").exists() and not (run / "selection.json").exists()
    assert load_checkpoint(run / "last.safetensors").train_config["train"]["patch_size"] == [
        16, 16, 5]


def test_choice_is_the_last_screening_validation_and_ties_go_to_the_screening_config():
    from medseg.training.loop import TrainResult
    from medseg.training.screening import Candidate, Screened, choose

    def screened(name, score):
        rows = [{"epoch": 1, "val_mean_dice": 0.9}, {"epoch": 2},
                {"epoch": 3, "val_mean_dice": score}]  # the last validation counts
        return Screened(Candidate(name, None, None), TrainResult(None, 3, 0.9, 1, rows), 30.0)

    runs = [screened("plan", 0.5), screened("plan_2d", 0.5)]
    assert choose(runs).candidate.name == "plan"
    runs = [screened("plan", math.nan), screened("plan_2d", 0.1)]
    assert choose(runs).candidate.name == "plan_2d"
    runs = [screened("plan", 0.3), screened("plan_2d", 0.7), screened("plan_3", 0.6)]
    assert choose(runs).candidate.name == "plan_2d"


def test_bad_select_key_names_the_closest(tmp_path, capsys):
    config, _ = _configs(tmp_path)
    raw = config.read_text().replace("candidates:", "candidate:")
    config.write_text(raw)
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err
    assert "unknown key 'train.select.candidate'; did you mean 'train.select.candidates'?" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit, message", [
    ({"data": {"val_fraction": 0.5}}, "data differs from"),
    ({"preprocessing": {"spacing_mm": [4.0, 4.0, 8.0]}}, "preprocessing differs from"),
    ({"train": {"seed": 1}}, "train.seed differs from"),
])
def test_a_candidate_on_another_split_or_grid_is_refused(tmp_path, capsys, edit, message):
    import yaml

    config, plan_2d = _configs(tmp_path)
    raw = yaml.safe_load(plan_2d.read_text())
    for section, values in edit.items():
        raw[section].update(values)
    write_config(plan_2d, raw)
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plan_2d) in err and message in err
    assert not (tmp_path / "run" / "screen").exists()


def test_screening_needs_a_budget(tmp_path, capsys):
    config, _ = _configs(tmp_path)
    assert main(["train", str(config), "-o", str(tmp_path / "run"), "--no-progress",
                 "--set", "train.max_minutes=null"]) == 2
    assert "train.select screens within a time budget" in capsys.readouterr().err
