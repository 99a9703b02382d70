"""Run directories never lose finished work: fresh runs refuse foreign directories, resumes
refuse changes to what the run is, and bad input ends with exit code 2 before anything is
written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import TINY_SYNTHETIC

from admmprune.cli import main

TINY = TINY_SYNTHETIC
RECIPE = "recipes/lenet5.yaml"
pytestmark = pytest.mark.usefixtures("in_repo")


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


@pytest.fixture
def finished(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["prune", RECIPE, "--run-dir", str(run_dir), *TINY]) == 0
    return run_dir


@pytest.mark.parametrize("change", [["--exclude", "[fc2]"], ["--model", "mlp"],
                                    ["--all-percent", "50"], ["--learning-rate", "0.5"]])
def test_resume_refuses_to_change_what_the_run_is_and_writes_nothing(finished, capsys, change):
    before = snapshot(finished)
    assert main(["prune", "--resume", str(finished), *change]) == 2
    err = capsys.readouterr().err
    key = change[0].removeprefix("--").replace("-", "_")
    assert "cannot change what the run is" in err and key in err
    assert snapshot(finished) == before


def test_resume_may_add_retraining_epochs_and_records_it(finished):
    assert main(["prune", "--resume", str(finished), "--retraining-epochs", "2",
                 "--no-progress"]) == 0
    records = [json.loads(line) for line in (finished / "metrics.jsonl").open()]
    assert {"phase": "resume", "changed": {"retraining_epochs": [1, 2]}} in records
    assert [r["epoch"] for r in records if r["phase"] == "retrain"] == [1, 2]
    assert yaml.safe_load((finished / "config.yaml").read_text())["retraining_epochs"] == 2
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["complete"] and summary["all_percent"] == 90


def test_a_new_run_refuses_a_finished_directory_without_checkpoint(finished, capsys):
    (finished / "checkpoint.pt").unlink()
    before = snapshot(finished)
    assert main(["prune", RECIPE, "--run-dir", str(finished), *TINY]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert snapshot(finished) == before


def test_a_new_run_refuses_a_directory_holding_other_files(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["prune", RECIPE, "--run-dir", str(tmp_path), *TINY]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_run_dir_that_is_a_file_or_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["prune", RECIPE, "--run-dir", str(tmp_path / "file"), *TINY]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["prune", RECIPE, "--run-dir", str(tmp_path / "file" / "run"), *TINY]) == 2
    assert "run directory" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--model", "mlp", "--model-args", "{depth: -1}"], "depth"),
    (["--rho-growth", ".nan"], "rho_growth"),
    (["--rho-max", ".inf", "--rho", ".inf"], "rho"),
    (["--layer-percents", "[50, 50]", "--projection", "layerwise", "--live-weights", "false"],
     "layer_percents"),
    (["--exclude", "[fc9]"], "fc9"),
])
def test_bad_input_is_refused_before_any_training(tmp_path, capsys, monkeypatch, args,
                                                   message):
    import admmprune.runs.pipeline as pipeline

    def no_training(*_, **__):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "train_epoch", no_training)
    run_dir = tmp_path / "run"
    assert main(["prune", RECIPE, "--run-dir", str(run_dir), *TINY, *args]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_corrupt_config_yaml_in_eval_and_resume(finished, capsys):
    (finished / "config.yaml").write_text("model: [unclosed")
    assert main(["eval", str(finished)]) == 2
    assert "config.yaml is not valid YAML" in capsys.readouterr().err
    assert main(["prune", "--resume", str(finished)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_ctrl_c_during_train_exits_130(tmp_path, capsys, monkeypatch):
    import admmprune.runs.pipeline as pipeline

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train_epoch", interrupt)
    assert main(["train", RECIPE, "--run-dir", str(tmp_path / "run"), *TINY]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_metrics_are_not_logged_twice_after_a_kill_between_log_and_checkpoint(
        tmp_path, monkeypatch):
    """A kill after an iteration's record was written but before its checkpoint: the resumed
    run redoes that iteration and metrics.jsonl holds it once."""
    import admmprune.runs.pipeline as pipeline

    run_dir = tmp_path / "run"
    real_save = pipeline.Run.save
    calls = {"n": 0}

    def dying_save(self, optimizer=None):
        calls["n"] += 1
        if calls["n"] == 3:  # dense epoch, dense end, then the first ADMM iteration
            raise KeyboardInterrupt
        return real_save(self, optimizer)

    monkeypatch.setattr(pipeline.Run, "save", dying_save)
    assert main(["prune", RECIPE, "--run-dir", str(run_dir), *TINY, "--k-step", "2"]) == 130
    logged = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()]
    assert logged == ["dense", "admm"]  # the admm record is there, its checkpoint is not
    monkeypatch.setattr(pipeline.Run, "save", real_save)
    assert main(["prune", "--resume", str(run_dir), "--no-progress"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    admm = [r["iteration"] for r in records if r["phase"] == "admm"]
    assert admm == [1, 2]
    assert torch.load(run_dir / "model.pt")  # finished


def test_a_kill_between_the_first_record_and_the_first_checkpoint_restarts(
        tmp_path, monkeypatch, capsys):
    """Before its first checkpoint a run holds no finished work, also when the first
    epoch's record made it to metrics.jsonl: the same command starts it over, and so does
    --resume, with that record logged once."""
    import admmprune.runs.pipeline as pipeline

    real_save = pipeline.Run.save

    def dying_save(self, optimizer=None):
        raise KeyboardInterrupt

    for name, again in (("same-command", ["prune", RECIPE, "--run-dir", "{run}", *TINY]),
                        ("resume", ["prune", "--resume", "{run}"])):
        run_dir = tmp_path / name
        command = [a.format(run=run_dir) for a in again]
        monkeypatch.setattr(pipeline.Run, "save", dying_save)
        assert main(["prune", RECIPE, "--run-dir", str(run_dir), *TINY]) == 130
        assert capsys.readouterr().err.strip().splitlines()[-1].split() == \
            ["admmprune", "prune", "--resume", str(run_dir)]
        logged = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()]
        assert logged == ["dense"] and not (run_dir / "checkpoint.pt").exists()
        # what a SIGKILL while writing the first checkpoint leaves
        (run_dir / "checkpoint.pt.new.tmp").write_bytes(b"half a checkpoint")
        monkeypatch.setattr(pipeline.Run, "save", real_save)
        assert main(command) == 0, command
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        assert [r["phase"] for r in records].count("dense") == 1
        assert json.loads((run_dir / "summary.json").read_text())["complete"]


def test_ctrl_c_before_anything_is_written_says_to_run_the_command_again(
        tmp_path, monkeypatch, capsys):
    import admmprune.runs.pipeline as pipeline

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "load_data", interrupt)
    run_dir = tmp_path / "run"
    assert main(["prune", RECIPE, "--run-dir", str(run_dir), *TINY]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not run_dir.exists()
    assert main(["prune", "--resume", str(run_dir)]) == 2  # as the message implies
    assert "not a run directory" in capsys.readouterr().err


def test_ctrl_c_in_a_run_directory_named_by_default_names_it(tmp_path, interrupt_training,
                                                             capsys):
    interrupt_training(1)
    assert main(["prune", RECIPE, "--output-dir", str(tmp_path), *TINY]) == 130
    [run_dir] = tmp_path.iterdir()  # OUTPUT_DIR/NAME-TIMESTAMP
    advice = capsys.readouterr().err.strip().splitlines()[-1].split()
    assert advice == ["admmprune", "prune", "--resume", str(run_dir)]
    interrupt_training(None)
    assert main(advice[1:]) == 0
