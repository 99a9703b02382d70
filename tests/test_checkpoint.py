"""Crash-proof checkpoints: a run killed with SIGKILL anywhere resumes to the bitwise result
of an uninterrupted run; a damaged last checkpoint (flipped byte, truncated file) is detected
by its checksum and the previous one is used; two damaged checkpoints end with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

import admmprune.runs.pipeline as pipeline
from admmprune.cli import main
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.runs.rundir import (
    CheckpointError,
    RunDirectory,
    load_checked,
    save_checked,
)

# synthetic data, Adam, shift augmentation, an uneven last batch: every source of state
SETTINGS = dict(dataset="synthetic", model="lenet5", train_subset=330, test_subset=64,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=4,
                retraining_epochs=3, progress=False, seed=3, augment_shift=2, threads=1)
REAL_TRAIN_EPOCH = pipeline.train_epoch


def cli_args() -> list[str]:
    return [a for k, v in SETTINGS.items() if k != "progress"
            for a in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]


def records(run_dir) -> list[dict]:
    """metrics.jsonl without timings and resume notes: what the run computed."""
    out = []
    for line in (run_dir / "metrics.jsonl").open():
        record = json.loads(line)
        if record["phase"] != "resume":
            out.append({k: v for k, v in record.items()
                        if k not in ("seconds", "train_examples_per_second")})
    return out


def assert_same_model(a_dir, b_dir) -> None:
    a = torch.load(a_dir / "model.pt")
    b = torch.load(b_dir / "model.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    torch.set_num_threads(1)
    run_pipeline(load_config(None, SETTINGS), run_dir=run_dir)
    return run_dir


def test_checked_file_round_trip_and_every_kind_of_damage(tmp_path):
    state = {"w": torch.randn(300, 40), "meta": [1, "two", {"three": 3.0}]}
    path = tmp_path / "c.pt"
    save_checked(state, path)
    back = load_checked(path)
    assert torch.equal(back["w"], state["w"]) and back["meta"] == state["meta"]
    assert not (tmp_path / "c.pt.tmp").exists()
    data = path.read_bytes()

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # one bit in the middle of the tensor bytes
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checked(path)
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checked(path)
    path.write_bytes(data[:20])  # not even a whole header
    with pytest.raises(CheckpointError, match="header"):
        load_checked(path)
    header = bytearray(data)
    header[40] = ord("x") if header[40] != ord("x") else ord("y")  # inside the digest
    path.write_bytes(bytes(header))
    with pytest.raises(CheckpointError):
        load_checked(path)
    torch.save(state, path)  # a checkpoint of an older admmprune: no header, still read
    assert torch.equal(load_checked(path)["w"], state["w"])


def test_each_checkpoint_keeps_the_one_before(tmp_path):
    run = RunDirectory(tmp_path)
    for step in range(3):
        run.save_checkpoint({"progress": {"step": step}})
    current = load_checked(run.checkpoint)
    previous = load_checked(run.previous_checkpoint)
    assert current["progress"]["step"] == 2 and previous["progress"]["step"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.pt", "checkpoint.prev.pt"}


def _wait_for(run_dir, phase: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before phase {phase}: "
                                 + proc.stderr.read().decode())
        if metrics.exists() and any(json.loads(line)["phase"] == phase
                                    for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.01)
    raise AssertionError(f"no {phase} record within {timeout} s")


@pytest.mark.parametrize("phase, not_yet", [("admm", "hard_prune"), ("retrain", "summary")])
def test_sigkill_then_resume_ends_bitwise_like_the_uninterrupted_run(
        tmp_path, reference, phase, not_yet):
    """A real kill (no handler runs) once the first record of ``phase`` is logged: the process
    is then inside that phase's next unit, possibly writing its checkpoint."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "admmprune", "prune"]
    proc = subprocess.Popen([*command, *cli_args(), "--run-dir", str(run_dir)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(run_dir, phase, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    phases = [r["phase"] for r in records(run_dir)]
    assert phase in phases
    if not_yet == "summary":
        assert not (run_dir / "summary.json").exists() and not (run_dir / "model.pt").exists()
    else:
        assert not_yet not in phases  # killed in the middle of the ADMM iterations

    done = subprocess.run([*command, "--resume", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert_same_model(reference, run_dir)
    assert records(run_dir) == records(reference)  # every unit logged once, same numbers


def _interrupted_run(run_dir, monkeypatch, at_epoch: int) -> None:
    """Ctrl-C in the middle of training epoch ``at_epoch`` (0-based over the whole run)."""
    count = {"epochs": 0}

    def spy(model, batches, optimizer, **kwargs):
        count["epochs"] += 1
        if count["epochs"] == at_epoch + 1:
            raise KeyboardInterrupt
        return REAL_TRAIN_EPOCH(model, batches, optimizer, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", spy)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_config(None, SETTINGS), run_dir=run_dir)
    monkeypatch.setattr(pipeline, "train_epoch", REAL_TRAIN_EPOCH)


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x10
    path.write_bytes(bytes(data))


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flipped-byte", "truncated"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
        tmp_path, reference, monkeypatch, capsys, damage):
    run_dir = tmp_path / "run"
    _interrupted_run(run_dir, monkeypatch, at_epoch=3)  # dense, admm 1, admm 2 done
    damage(run_dir / "checkpoint.pt")
    capsys.readouterr()
    assert main(["prune", "--resume", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "resuming from checkpoint.prev.pt" in err and "checkpoint.pt" in err
    notes = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [n["checkpoint"] for n in notes if n["phase"] == "resume"] == ["checkpoint.prev.pt"]
    # the records of the unit whose checkpoint was lost were dropped and logged again once
    assert records(run_dir) == records(reference)
    assert_same_model(reference, run_dir)


def test_both_checkpoints_damaged_is_a_clear_error(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _interrupted_run(run_dir, monkeypatch, at_epoch=2)
    _flip(run_dir / "checkpoint.pt")
    _truncate(run_dir / "checkpoint.prev.pt")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(["prune", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "sha256" in err and "truncated" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # nothing written
