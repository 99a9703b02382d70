"""Nothing a run wrote is overwritten, a run directory is held by one process at a time, a
finished run rebuilds a lost model.pt, and --weights runs no code (issue 24: items 1, 4, 5,
9, 10, 11)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, TINY_SYNTHETIC, make_run_dir

import admmprune
import admmprune.runs.pipeline as pipeline
from admmprune.cli import main
from admmprune.runs.rundir import RunDirectory, RunError, check_output_path

TINY = TINY_SYNTHETIC
RECIPE = "recipes/lenet5.yaml"
pytestmark = pytest.mark.usefixtures("in_repo")


@pytest.fixture
def run_dir(tmp_path):
    """A finished-looking LeNet-5 run (synthetic data) with dense.pt and summary.json."""
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5")
    run = make_run_dir(tmp_path, model.state_dict())
    torch.save(model.state_dict(), run / "dense.pt")
    (run / "summary.json").write_text(json.dumps({"compression": 2.0, "model": "lenet5"}))
    return run


def snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


# -- 1: no command writes over a run directory's own files -------------------------------
@pytest.mark.parametrize("argv", [
    ["export", "{run}", "--out", "{run}/model.pt"],
    ["export", "{run}", "--format", "dense", "--out", "{run}/../run/summary.json"],
    ["shrink", "{run}", "--out", "{run}/model.pt"],
    ["tradeoff", "{run}", "--save-results", "{run}/summary.json", "--out", "{tmp}/t.png"],
    ["tradeoff", "{run}", "--out", "{run}/config.yaml"],
    ["draw", "{run}", "--out", "{run}/metrics.jsonl"],
])
def test_no_command_writes_over_a_run_file(run_dir, tmp_path, capsys, argv):
    (run_dir / "metrics.jsonl").write_text("")
    before = snapshot(run_dir)
    argv = [a.format(run=run_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "own" in err and "destroy the run's results" in err and "Traceback" not in err
    assert snapshot(run_dir) == before


def test_check_output_path_finds_any_run_directory(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    for name in ["checkpoint.pt", "checkpoint.prev.pt", "admm.pt", "checkpoint.pt.new.tmp",
                 "model.pt.tmp", "run.lock"]:
        with pytest.raises(RunError, match="own"):
            check_output_path(tmp_path / "sub" / ".." / name)
    assert check_output_path(tmp_path / "model.apz") == tmp_path / "model.apz"
    # the same names outside a run directory are ordinary files
    (tmp_path / "other").mkdir()
    assert check_output_path(tmp_path / "other" / "model.pt").name == "model.pt"


def test_export_of_other_weights_is_named_after_them(run_dir, capsys):
    assert main(["export", str(run_dir)]) == 0
    pruned = (run_dir / "model.apz").read_bytes()
    torch.manual_seed(1)
    torch.save(admmprune.create_model("lenet5").state_dict(), run_dir / "dense.pt")
    assert main(["export", str(run_dir), "--weights", str(run_dir / "dense.pt")]) == 0
    assert "dense.apz" in capsys.readouterr().out
    assert (run_dir / "model.apz").read_bytes() == pruned
    assert (run_dir / "dense.apz").read_bytes() != pruned


# -- 4: one process per run directory -----------------------------------------------------
HOLD = ("import sys, time\nfrom admmprune.runs.rundir import RunDirectory\n"
        "RunDirectory(sys.argv[1]).lock()\nprint('locked', flush=True)\ntime.sleep(120)\n")


def test_a_second_process_refuses_a_held_run_dir_and_a_killed_one_leaves_no_lock(
        tmp_path, capsys):
    target = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["prune", RECIPE, "--run-dir", str(target), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"in use by another admmprune process (PID {holder.pid})" in err
        assert sorted(p.name for p in target.iterdir()) == ["run.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's lock died with it: the directory is free
    assert main(["prune", RECIPE, "--run-dir", str(target), *TINY]) == 0
    assert (target / "model.pt").is_file()


def test_prune_holds_the_lock_while_it_runs_and_releases_it(tmp_path, monkeypatch):
    target = tmp_path / "run"
    refusals = []
    real = pipeline.train_epoch

    def epoch(*args, **kwargs):
        try:
            RunDirectory(target).lock()  # a second open file: flock conflicts like a process
        except RunError as err:
            refusals.append(str(err))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", epoch)
    assert main(["prune", RECIPE, "--run-dir", str(target), *TINY]) == 0
    assert len(refusals) == 3 and all(f"PID {os.getpid()}" in r for r in refusals)
    other = RunDirectory(target)
    other.lock()  # released at the end
    other.close()
    assert (target / "run.lock").is_file() and (target / "model.pt").is_file()


def test_a_failed_start_releases_and_removes_what_the_lock_created(tmp_path, capsys):
    target = tmp_path / "new" / "run"
    assert main(["prune", RECIPE, "--run-dir", str(target), *TINY, "--include",
                 "[nosuch]"]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert not target.exists()


# -- 5: resuming a finished run whose model.pt was deleted --------------------------------
def test_resume_rebuilds_a_deleted_model_pt_and_names_what_is_lost(tmp_path, capsys):
    target = tmp_path / "run"
    assert main(["prune", RECIPE, "--run-dir", str(target), *TINY]) == 0
    final = torch.load(target / "model.pt")
    (target / "model.pt").unlink()
    (target / "dense.pt").unlink()
    capsys.readouterr()
    assert main(["prune", "--resume", str(target)]) == 0
    err = capsys.readouterr().err
    assert "rebuilt model.pt from the checkpoint" in err
    assert "dense.pt missing" in err and "cannot be rebuilt" in err
    rebuilt = torch.load(target / "model.pt")
    assert all(torch.equal(final[k], rebuilt[k]) for k in final)
    assert main(["eval", str(target)]) == 0


# -- 9: --weights runs no code unless the user says so ------------------------------------
class _Marker:
    """Unpickling it creates a file: proof that a file's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def alexnet_run(tmp_path):
    run = tmp_path / "alex"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": "alexnet", "dataset": "synthetic", "device": "cpu", "progress": False,
         "model_args": {"num_classes": 10, "image_size": 67, "fc_width": 64}}))
    torch.save(admmprune.create_model("alexnet", num_classes=10, image_size=67,
                                      fc_width=64).state_dict(), run / "model.pt")
    return run


def test_weights_npy_is_not_unpickled_without_trust_pickle(tmp_path, capsys):
    import numpy as np

    run = alexnet_run(tmp_path)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array(_Marker(marker), dtype=object), allow_pickle=True)
    for command in (["export", str(run), "--out", str(tmp_path / "x.apz")],
                    ["shrink", str(run), "--out", str(tmp_path / "x.safetensors")],
                    ["eval", str(run)]):
        assert main([*command, "--weights", str(evil)]) == 2
        err = capsys.readouterr().err
        assert not marker.exists(), command[0]
        assert "unpickling" in err and "--trust-pickle" in err and "refused" in err
    # the explicit switch is what lets it run (the file then fails as weights)
    assert main(["export", str(run), "--out", str(tmp_path / "x.apz"), "--weights",
                 str(evil), "--trust-pickle"]) == 2
    assert marker.exists()
    assert "cannot load" in capsys.readouterr().err


def test_weights_safetensors_are_read(run_dir, tmp_path, capsys):
    from safetensors.torch import save_file

    state = torch.load(run_dir / "model.pt")
    save_file(state, str(tmp_path / "w.safetensors"))
    assert main(["eval", str(run_dir), "--weights", str(tmp_path / "w.safetensors")]) == 0


# -- 11: eval --weights on a pickled object says what the file is ------------------------
def test_eval_of_a_pickled_model_names_the_file_without_torch_advice(run_dir, capsys):
    torch.save(admmprune.create_model("lenet5"), run_dir.parent / "whole.pt")
    assert main(["eval", str(run_dir), "--weights", str(run_dir.parent / "whole.pt")]) == 2
    err = capsys.readouterr().err
    assert "not a state dict readable without running code (a pickled object" in err
    assert "weights_only=False" not in err and "Traceback" not in err
    torch.save(torch.zeros(3), run_dir.parent / "tensor.pt")
    assert main(["eval", str(run_dir), "--weights", str(run_dir.parent / "tensor.pt")]) == 2
    assert "holds a Tensor, not a state dict" in capsys.readouterr().err


# -- 10: a message and exit code 2, not a traceback ---------------------------------------
@pytest.fixture
def finished(tmp_path):
    target = tmp_path / "finished"
    assert main(["prune", RECIPE, "--run-dir", str(target), *TINY]) == 0
    return target


def no_training(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("training started")

    monkeypatch.setattr(pipeline, "train_epoch", refuse)


def exits_2(argv, capsys, *expected):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


@pytest.mark.parametrize("flag, value, message", [
    ("--seeds", "", "--seeds lists no seed"),
    ("--methods", "", "--methods lists no method"),
    ("--methods", " , ", "choose from"),
])
def test_compare_with_an_empty_list(tmp_path, capsys, monkeypatch, flag, value, message):
    no_training(monkeypatch)
    exits_2(["compare", RECIPE, flag, value, "--out", str(tmp_path / "cmp"), *TINY], capsys,
            message)


def test_tradeoff_bad_picture_and_unfinished_summary(run_dir, tmp_path, capsys):
    exits_2(["tradeoff", str(run_dir), "--out", str(tmp_path / "x.txt")], capsys,
            "cannot draw a picture as .txt", ".png")
    assert not (tmp_path / "x.txt").exists()
    (run_dir / "summary.json").write_text(json.dumps({"model": "lenet5"}))
    exits_2(["tradeoff", str(run_dir), "--out", str(tmp_path / "x.png")], capsys,
            "has no compression", "not a finished pruning run")


def test_bad_patterns_and_devices_are_config_errors(tmp_path, capsys, monkeypatch):
    no_training(monkeypatch)
    exits_2(["inspect", RECIPE, "--include", "[[fc1]]"], capsys,
            "include must be a list of name patterns (strings)")
    exits_2(["prune", RECIPE, "--exclude", "{a: 1}", "--run-dir", str(tmp_path / "r"),
             *TINY], capsys, "exclude must be a list of name patterns")
    exits_2(["prune", RECIPE, "--device", "cuda:abc", "--run-dir", str(tmp_path / "r"),
             *TINY], capsys, "device must be auto or a device torch knows", "'cuda:abc'")
    assert not (tmp_path / "r").exists()


def test_export_out_a_directory_or_below_a_file(run_dir, tmp_path, capsys):
    target = tmp_path / "existing"
    target.mkdir()
    exits_2(["export", str(run_dir), "--out", f"{target}/"], capsys, "is a directory")
    assert list(tmp_path.glob("*.tmp")) == [] and list(target.iterdir()) == []
    (tmp_path / "a_file").write_text("x")
    exits_2(["export", str(run_dir), "--out", str(tmp_path / "a_file" / "x.apz")], capsys,
            "a_file is a file, not a directory")


def test_report_reads_up_to_a_torn_line_and_refuses_a_corrupt_summary(finished, capsys):
    with (finished / "metrics.jsonl").open("a") as handle:
        handle.write('{"phase": "retr')
    capsys.readouterr()
    assert main(["report", str(finished), "--no-plots"]) == 0
    assert main(["report", str(finished)]) == 0
    assert "the last line is torn" in capsys.readouterr().err
    (finished / "metrics.jsonl").write_text('{"phase": "dense"\n{"phase": "admm"}\n')
    exits_2(["report", str(finished)], capsys, "line 1, is not a JSON record")
    (finished / "summary.json").write_text('{"model": "lenet5", "compre')
    exits_2(["report", str(finished)], capsys, "summary.json is not valid JSON", "damaged")


def _full_disk(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_during_prune_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)  # bytes reach the temporary file, then:
        _full_disk()

    monkeypatch.setattr(torch, "save", save)
    target = tmp_path / "run"
    exits_2(["prune", RECIPE, "--run-dir", str(target), *TINY], capsys,
            "no space left on device")
    assert [p.name for p in target.iterdir() if ".tmp" in p.name or ".new" in p.name] == []


def test_disk_full_during_export_leaves_no_temporary_file(run_dir, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setattr(os, "fsync", _full_disk)
    exits_2(["export", str(run_dir), "--out", str(tmp_path / "m.apz")], capsys,
            "no space left on device")
    assert list(tmp_path.glob("m.apz*")) == []


def test_pruner_on_meta_weights_is_a_pruner_error():
    with torch.device("meta"):
        model = admmprune.create_model("lenet5")
    with pytest.raises(admmprune.PrunerError, match="meta device"):
        admmprune.ADMMPruner(model, all_percent=90)


# -- 11: minor ----------------------------------------------------------------------------
def test_a_ratio_keeping_no_weight_is_refused_before_dense_training(tmp_path, capsys,
                                                                   monkeypatch):
    no_training(monkeypatch)
    exits_2(["prune", RECIPE, "--run-dir", str(tmp_path / "r"), *TINY, "--all-percent",
             "99.9999"], capsys, "all_percent=99.9999 removes all 430500 weights")
    exits_2(["prune", RECIPE, "--run-dir", str(tmp_path / "r"), *TINY, "--all-percent",
             "[50, 99.9999]"], capsys, "removes all")
    assert not (tmp_path / "r").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"admmprune {admmprune.__version__}"


def test_tradeoff_published_suggests_only_valid_choices(run_dir, tmp_path, capsys):
    from admmprune.runs.records import PUBLISHED

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "model": "mlp"}))
    (run_dir / "summary.json").write_text(json.dumps(
        {"model": "mlp", "compression": 10.0, "pruned_accuracy": 0.9, "dense_accuracy": 0.95}))
    err = exits_2(["tradeoff", str(run_dir), "--published", "lenet5", "--out",
                   str(tmp_path / "t.png")], capsys, "plot it without --published")
    assert "mlp" not in PUBLISHED and "--published mlp" not in err and "or none" not in err


def test_imagenet_labels_reads_root_from_the_environment(tmp_path, capsys, monkeypatch):
    from imagegen import make_mini_imagenet

    from admmprune.data.imagenet import read_label_file

    mini = make_mini_imagenet(tmp_path / "ilsvrc", ["n01440764", "n01443537"],
                              train_per_class=1, val_count=4)
    monkeypatch.delenv("ADMMPRUNE_IMAGENET_DIR", raising=False)
    monkeypatch.setenv("ADMMPRUNE_DATA_DIR", str(tmp_path / "empty"))
    exits_2(["imagenet-labels", "--devkit", str(mini.devkit)], capsys,
            "--root ROOT", "ADMMPRUNE_IMAGENET_DIR")
    monkeypatch.setenv("ADMMPRUNE_IMAGENET_DIR", str(mini.root))
    assert main(["imagenet-labels", "--devkit", str(mini.devkit)]) == 0
    assert read_label_file(mini.root / "val_labels.txt")[0] == mini.val_labels
