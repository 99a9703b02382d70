"""Progressive stages through the pipeline, on tiny generated data."""

import json

import pytest
import torch

import admmprune.runs.pipeline as pipeline
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline

TINY = {"dataset": "synthetic", "train_subset": 256, "test_subset": 128, "batch_size": 64,
        "model": "mlp", "model_args": {"depth": 2, "width": 32}, "dense_epochs": 1,
        "epochs": 1, "retraining_epochs": 1, "progress": False, "threads": 1}
TOTAL = 784 * 32 + 32 * 32 + 32 * 10


def config(**extra):
    return load_config(None, {**TINY, **extra})


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def test_stages_run_in_order_and_each_ends_at_its_exact_k(tmp_path):
    percents = [80.0, 95.0, 99.0]
    cfg = config(all_percent=percents, k_step=[1, 2, 3], rho=[1e-3, 2e-3, 4e-3],
                 stage_retraining_epochs=1)
    summary = run_pipeline(cfg, run_dir=tmp_path / "run")
    log = records(tmp_path / "run")
    admm = [r for r in log if r["phase"] == "admm"]
    assert [r["stage"] for r in admm] == [1, 2, 2, 3, 3, 3]
    assert [r["all_percent"] for r in admm] == [80, 95, 95, 99, 99, 99]
    firsts = [r for r, prev in zip(admm, [None] + admm[:-1], strict=True)
              if prev is None or prev["stage"] != r["stage"]]
    assert [r["rho"] for r in firsts] == [1e-3, 2e-3, 4e-3]
    pruned = [r for r in log if r["phase"] == "hard_prune"]
    assert [r["kept"] for r in pruned] == [TOTAL - round(p * TOTAL / 100) for p in percents]
    phases = [r["phase"] for r in log]
    # masked retraining between stages, not after the last one (that is `retrain`)
    assert phases.count("stage_retrain") == 2 and phases[-1] == "retrain"
    assert summary["kept"] == TOTAL - round(99 * TOTAL / 100)


def test_final_mask_lies_inside_every_earlier_mask(tmp_path, monkeypatch):
    supports = []
    real_hard_prune = pipeline.ADMMPruner.hard_prune

    def spy(self, support="weights"):
        result = real_hard_prune(self, support)
        supports.append([m.clone() for m in self.masks])
        return result

    monkeypatch.setattr(pipeline.ADMMPruner, "hard_prune", spy)
    run_pipeline(config(all_percent=[90.0, 98.0], k_step=2, stage_retraining_epochs=1),
                 run_dir=tmp_path / "run")
    first, second = supports
    for a, b in zip(first, second, strict=True):
        assert not bool((b & ~a).any()), "a weight removed in stage 1 came back in stage 2"
    weights = torch.load(tmp_path / "run" / "model.pt")
    kept = sum(int(weights[n].count_nonzero()) for n in weights if n.endswith("weight"))
    assert kept == sum(int(m.sum()) for m in second)


def test_regrowth_is_allowed_only_when_asked(tmp_path):
    with pytest.raises(Exception, match="allow_regrowth"):
        config(all_percent=[95.0, 90.0], k_step=1)
    summary = run_pipeline(config(all_percent=[95.0, 90.0], k_step=1, allow_regrowth=True),
                           run_dir=tmp_path / "run")
    assert summary["kept"] == TOTAL - round(90 * TOTAL / 100)


def test_interrupted_second_stage_resumes(tmp_path, monkeypatch):
    cfg = config(all_percent=[90.0, 98.0], k_step=2)
    real_epoch = pipeline.train_epoch
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # dense, stage 1 x2, stage 2 iteration 1, then stop
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, run_dir=tmp_path / "run")
    monkeypatch.setattr(pipeline, "train_epoch", real_epoch)
    summary = run_pipeline(cfg, run_dir=tmp_path / "run", resume=True)
    admm = [r for r in records(tmp_path / "run") if r["phase"] == "admm"]
    assert [(r["stage"], r["iteration"]) for r in admm] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert summary["kept"] == TOTAL - round(98 * TOTAL / 100) and summary["complete"]


def test_adaptive_rho_changes_rho_by_the_residuals(tmp_path):
    run_pipeline(config(all_percent=95.0, k_step=4, adaptive_rho=True, rho=1e-4),
                 run_dir=tmp_path / "run")
    admm = [r for r in records(tmp_path / "run") if r["phase"] == "admm"]
    for r in admm:
        if r["primal_residual"] > 10 * r["dual_residual"]:
            assert r["next_rho"] == pytest.approx(2 * r["rho"])
        elif r["dual_residual"] > 10 * r["primal_residual"]:
            assert r["next_rho"] == pytest.approx(r["rho"] / 2)
        else:
            assert r["next_rho"] == r["rho"]
    assert admm[0]["next_rho"] > admm[0]["rho"]  # tiny rho: the primal residual dominates
