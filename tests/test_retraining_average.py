"""retraining_average_epochs: the mean of the last retraining epochs' weights."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from admmprune.runs.averaging import RetrainingAverage, has_batch_norm
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.runs.rundir import RunError


def config(**overrides):
    base = dict(dataset="synthetic", model="lenet5", train_subset=96, test_subset=32,
                batch_size=32, dense_epochs=1, all_percent=95.0, k_step=1,
                retraining_epochs=3, retraining_average_epochs=2, progress=False, seed=3)
    return load_config(None, {**base, **overrides})


def _records(run_dir, phase):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == phase]


def test_the_mean_of_the_window_with_zeros_kept():
    model = nn.Linear(3, 2)
    average = RetrainingAverage(model, epochs=2, total=4)
    assert [average.covers(e) for e in range(5)] == [False, False, True, True, False]
    snapshots = []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
            model.weight[0, 0] = 0.0  # a pruned entry
            model.bias.fill_(-value)
        snapshots.append(model.weight.detach().clone())
        average.update(model)
    assert average.count == 3
    average.apply(model, [], torch.device("cpu"))
    assert torch.allclose(model.weight, torch.stack(snapshots).mean(0))
    assert model.weight[0, 0].item() == 0.0
    assert torch.allclose(model.bias, torch.full((2,), -3.0))


def test_state_round_trip_and_mismatch():
    model = nn.Linear(3, 2)
    average = RetrainingAverage(model, epochs=2, total=5)
    average.update(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)
    restored = RetrainingAverage(nn.Linear(3, 2), epochs=2, total=5)
    restored.load_state_dict(average.state_dict())
    assert restored.count == 2
    target = nn.Linear(3, 2)
    restored.apply(target, [], torch.device("cpu"))
    assert torch.allclose(target.weight, model.weight - 0.5)
    with pytest.raises(ValueError, match="last 2 of 5"):
        RetrainingAverage(nn.Linear(3, 2), epochs=3, total=5).load_state_dict(
            average.state_dict())
    with pytest.raises(ValueError, match="last 6 of 5"):
        RetrainingAverage(model, epochs=6, total=5)
    with pytest.raises(RuntimeError, match="no epoch"):
        RetrainingAverage(model, epochs=1, total=5).apply(model, [], torch.device("cpu"))


def test_batch_norm_statistics_are_recomputed_for_the_mean():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    assert has_batch_norm(model) and not has_batch_norm(nn.Linear(2, 2))
    average = RetrainingAverage(model, epochs=1, total=1)
    average.update(model)
    model[1].running_mean.fill_(123.0)  # the last epoch's, for other weights
    x = torch.randn(64, 2)
    average.apply(model, [(x, None)], torch.device("cpu"))
    with torch.no_grad():
        expected = model[0](x).mean(0)
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)


def test_bad_values_are_refused():
    for bad in (-1, 1.5, "two"):
        with pytest.raises(ConfigError, match="retraining_average_epochs"):
            config(retraining_average_epochs=bad)
    with pytest.raises(ConfigError, match="at most retraining_epochs"):
        config(retraining_average_epochs=4)


def test_run_keeps_the_mean_and_the_masks(tmp_path):
    last = run_pipeline(config(retraining_average_epochs=0), run_dir=tmp_path / "last")
    one = run_pipeline(config(retraining_average_epochs=1), run_dir=tmp_path / "one")
    two = run_pipeline(config(), run_dir=tmp_path / "two")
    a = torch.load(tmp_path / "last" / "model.pt")
    b = torch.load(tmp_path / "one" / "model.pt")
    c = torch.load(tmp_path / "two" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the mean of one epoch is that epoch
    assert not all(torch.equal(a[k], c[k]) for k in a)
    admm = torch.load(tmp_path / "two" / "admm.pt")["model"]
    for name, weight in c.items():
        if weight.dim() > 1:  # the hard prune's zeros stay zeros
            assert bool(((admm[name] == 0) <= (weight == 0)).all())
    assert _records(tmp_path / "last", "average") == []
    (record,) = _records(tmp_path / "two", "average")
    assert record["epochs"] == 2
    assert two["pruned_accuracy"] == record["test_accuracy"]
    assert last["pruned_accuracy"] == one["pruned_accuracy"]


def test_interrupted_inside_the_window_resumes_bitwise(tmp_path, interrupt_training):
    run_pipeline(config(), run_dir=tmp_path / "straight")
    interrupt_training(5)  # the third retraining epoch: one epoch already averaged
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), run_dir=tmp_path / "resumed")
    interrupt_training(None)
    run_pipeline(config(), run_dir=tmp_path / "resumed", resume=True)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    (record,) = _records(tmp_path / "resumed", "average")
    assert record["epochs"] == 2


def test_retraining_length_is_fixed_once_averaging_started(tmp_path):
    run_pipeline(config(), run_dir=tmp_path / "run")
    with pytest.raises(RunError, match="retraining_epochs cannot change"):
        run_pipeline(config(retraining_epochs=5), run_dir=tmp_path / "run", resume=True)
    # before retraining starts, the window may still be chosen
    run_pipeline(config(), run_dir=tmp_path / "admm", stage="admm")
    summary = run_pipeline(config(retraining_epochs=4, retraining_average_epochs=3),
                           run_dir=tmp_path / "admm", stage="retrain")
    (record,) = _records(tmp_path / "admm", "average")
    assert record["epochs"] == 3 and summary["complete"]
