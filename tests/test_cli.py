"""The command line end to end on a small slice of real MNIST, and its bad-input paths."""

import json

import pytest
import torch
from torch import nn

import admmprune.runs.pipeline as pipeline
from admmprune.cli import build_parser, main
from admmprune.models import registry

SMALL = ["--train-subset", "640", "--test-subset", "300", "--dense-epochs", "1", "--k-step",
         "2", "--retraining-epochs", "1", "--no-progress"]
RECIPE = "recipes/lenet5.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def prune(tmp_path, mnist_dir, *extra):
    return main(["prune", RECIPE, "--data-dir", str(mnist_dir), *SMALL, *extra])


@pytest.mark.parametrize("command", ["prune", "train", "eval", "report", "models", "keys"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: admmprune " + command in capsys.readouterr().out


def test_help_lists_the_seed_parameter_names():
    text = build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    for key in ["--k-step", "--epochs", "--retraining-epochs", "--steps-per-epoch", "--rho",
                "--p-lambda", "--all-percent", "--learning-rate", "--batch-size"]:
        assert key in text


def test_prune_end_to_end_writes_a_complete_run(tmp_path, mnist_dir, capsys):
    run_dir = tmp_path / "run"
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir), "--all-percent", "95") == 0
    out = capsys.readouterr().out
    for name in ["config.yaml", "metrics.jsonl", "checkpoint.pt", "dense.pt", "admm.pt",
                 "model.pt", "summary.json"]:
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    expected_keep = 430500 - round(95 * 430500 / 100)
    assert summary["kept"] == expected_keep and summary["total"] == 430500
    assert summary["compression"] == pytest.approx(430500 / expected_keep)
    assert 0.1 < summary["pruned_accuracy"] <= 1 and 0.1 < summary["dense_accuracy"] <= 1
    assert {r["name"] for r in summary["layers"]} == {"conv1.weight", "conv2.weight",
                                                        "fc1.weight", "fc2.weight"}
    assert "compression N/K" in out and "fc1.weight" in out
    weights = torch.load(run_dir / "model.pt")
    nonzero = sum(int(weights[f"{n}.weight"].count_nonzero()) for n in
                  ["conv1", "conv2", "fc1", "fc2"])
    assert nonzero == expected_keep
    phases = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()]
    assert phases == ["dense", "admm", "admm", "hard_prune", "retrain"]

    assert main(["report", str(run_dir)]) == 0
    for plot in ["admm_residuals.png", "accuracy.png", "kept_per_layer.png"]:
        assert (run_dir / plot).stat().st_size > 1000
    assert main(["eval", str(run_dir), "--data-dir", str(mnist_dir)]) == 0
    assert f"{100 * summary['pruned_accuracy']:.2f}%" in capsys.readouterr().out


def test_admm_and_retrain_as_separate_commands(tmp_path, mnist_dir):
    run_dir = tmp_path / "run"
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir), "--stage", "admm") == 0
    assert (run_dir / "admm.pt").is_file() and not (run_dir / "model.pt").exists()
    assert main(["prune", "--stage", "retrain", "--run-dir", str(run_dir),
                 "--retraining-epochs", "2"]) == 0
    phases = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()]
    assert phases.count("retrain") == 2 and phases.count("dense") == 1


def test_retrain_before_admm_is_a_clear_error(tmp_path, capsys):
    assert main(["prune", "--stage", "retrain", "--run-dir", str(tmp_path / "none")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_interrupted_run_resumes_without_redoing_work(tmp_path, mnist_dir, monkeypatch):
    run_dir = tmp_path / "run"
    real_epoch = pipeline.train_epoch
    calls = {"n": 0}

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # dense epoch, first W-step, then Ctrl-C in the second W-step
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", interrupt_on_third)
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir)) == 130
    assert not (run_dir / "summary.json").exists()
    monkeypatch.setattr(pipeline, "train_epoch", real_epoch)
    assert main(["prune", "--resume", str(run_dir)]) == 0
    phases = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()]
    assert phases == ["dense", "admm", "admm", "hard_prune", "retrain"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["kept"] == 430500 - round(98.6 * 4305)


def test_existing_run_dir_is_not_overwritten(tmp_path, mnist_dir, capsys):
    run_dir = tmp_path / "run"
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir), "--stage", "admm") == 0
    before = (run_dir / "checkpoint.pt").read_bytes()
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_corrupt_checkpoint_is_reported(tmp_path, mnist_dir, capsys):
    run_dir = tmp_path / "run"
    assert prune(tmp_path, mnist_dir, "--run-dir", str(run_dir), "--stage", "admm") == 0
    # both: a damaged last checkpoint alone falls back to the previous one
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run_dir / name).write_bytes(b"not a checkpoint")
    assert main(["prune", "--resume", str(run_dir)]) == 2
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--all-percent", "100"], "all_percent"),
        (["--all-percent", "-5"], "all_percent"),
        (["--k-step", "0"], "k_step"),
        (["--rho", "0"], "rho"),
        (["--exclude", "['*']"], "no prunable tensor"),
        (["--model", "resnet9000"], "unknown model"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, mnist_dir, capsys, args, message):
    code = prune(tmp_path, mnist_dir, "--run-dir", str(tmp_path / "r"), *args)
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_recipe(capsys):
    assert main(["prune", "recipes/nope.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


class _Diverging(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_nan_loss_stops_with_advice_and_keeps_the_run(tmp_path, mnist_dir, capsys,
                                                     monkeypatch):
    # registered for this test only, so the registry-wide model tests never see it
    monkeypatch.setitem(registry._REGISTRY, "test_diverging", _Diverging)
    run_dir = tmp_path / "run"
    code = prune(tmp_path, mnist_dir, "--run-dir", str(run_dir), "--model", "test_diverging")
    assert code == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "learning_rate" in err
    assert (run_dir / "config.yaml").is_file()


def test_missing_data_names_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ADMMPRUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("ADMMPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["prune", RECIPE, "--download", "false", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "ADMMPRUNE_DATA_DIR" in err
