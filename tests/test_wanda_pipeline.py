"""``pruning: wanda`` through the pipeline: a tiny GPT pruned by Wanda's per-row masks from
training batches (unstructured and 2:4), with and without retraining; and the compare
methods built on it keep the epoch budget."""

from __future__ import annotations

import pytest
import torch

from admmprune.projection import survivor_count
from admmprune.runs.compare import METHODS, fixed_percent, method_config
from admmprune.runs.config import ConfigError
from admmprune.runs.pipeline import run_pipeline

PRUNED = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def config(corpus, **overrides):
    from conftest import tiny_gpt_config

    return tiny_gpt_config(corpus, **overrides)


def pruned(state):
    return {k: v for k, v in state.items() if k.endswith(PRUNED)}


def test_wanda_keeps_the_same_share_of_every_output_row(code_corpus, tmp_path):
    summary = run_pipeline(config(code_corpus), run_dir=tmp_path / "run")
    dense = torch.load(tmp_path / "run" / "dense.pt")
    final = torch.load(tmp_path / "run" / "model.pt")
    for name, weight in pruned(final).items():
        rows = weight.t()  # HF Conv1D: [in, out]; a row is one output's inputs
        kept = (rows != 0).sum(dim=1)
        assert (kept == survivor_count(rows.shape[1], 75.0)).all(), name
        # no retraining: the kept weights are the dense ones
        assert torch.equal(weight, dense[name] * (weight != 0)), name
    assert summary["complete"] and summary["metric"] == "bpb"
    assert summary["higher_is_better"] is False


def test_wanda_two_of_four_then_retrained_stays_two_of_four(code_corpus, tmp_path):
    summary = run_pipeline(config(code_corpus, structure="nm", all_percent=50.0,
                                  retraining_epochs=1), run_dir=tmp_path / "run")
    final = torch.load(tmp_path / "run" / "model.pt")
    dense = torch.load(tmp_path / "run" / "dense.pt")
    for name, weight in pruned(final).items():
        groups = weight.t().reshape(weight.shape[1], -1, 4)  # 4 consecutive inputs of a row
        assert ((groups != 0).sum(dim=2) <= 2).all(), name
        assert not torch.equal(weight, dense[name] * (weight != 0))  # retrained
    assert summary["kept"] == summary["total"] // 2


def test_wanda_refuses_structures_it_cannot_score(code_corpus):
    with pytest.raises(ConfigError, match="wanda prunes once"):
        config(code_corpus, structure="filter")


def test_baseline_methods_share_the_budget(code_corpus):
    base = config(code_corpus, pruning="admm", k_step=3, retraining_epochs=2)
    budget = 3 + 2
    for method in ("admm", "layerwise", "magnitude", "uniform-magnitude", "wanda-retrain",
                   "admm-nm", "wanda-nm-retrain"):
        percent = fixed_percent(base, method) or 70.0
        cfg = method_config(base, method, percent)
        spent = cfg.retraining_epochs + (0 if cfg.pruning in ("oneshot", "wanda")
                                         else cfg.k_step * cfg.epochs)
        assert spent == budget, method
    for method in ("wanda", "wanda-nm"):
        assert method_config(base, method, 50.0).retraining_epochs == 0
    assert fixed_percent(base, "wanda-nm") == 50.0
    assert method_config(base, "uniform-magnitude", 70.0).projection == "layerwise"
    assert {"wanda", "wanda-retrain", "uniform-magnitude", "admm-nm"} <= set(METHODS)
