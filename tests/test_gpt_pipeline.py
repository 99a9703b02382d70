"""A tiny GPT on a small text file through the whole pipeline: exactly K weights survive,
the language-modeling metrics are recorded, and an interrupted run resumes bitwise."""

from __future__ import annotations

import math

import pytest
import torch

from admmprune.projection import survivor_count
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline

INCLUDE = ["*.c_attn", "*.c_proj", "*.c_fc"]
BLOCK_WEIGHTS = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)  # c_attn, c_proj, c_fc, c_proj


def config(corpus, **overrides):
    base = dict(model="gpt", model_args={"n_layer": 2, "n_embd": 32, "n_head": 2,
                                         "context": 16},
                dataset="text", task="language-modeling", data_dir=str(corpus),
                include=INCLUDE, train_subset=96, test_subset=32, batch_size=16,
                dense_epochs=1, all_percent=80.0, k_step=2, rho=1e-2,
                retraining_epochs=1, progress=False, seed=1, threads=1)
    return load_config(None, {**base, **overrides})


def test_tiny_gpt_is_pruned_to_exact_k_and_resumes_bitwise(code_corpus, tmp_path,
                                                           interrupt_training):
    summary = run_pipeline(config(code_corpus), run_dir=tmp_path / "straight")
    keep = survivor_count(BLOCK_WEIGHTS, 80.0)
    assert summary["prunable_weights"] == summary["total"] == BLOCK_WEIGHTS
    assert summary["kept"] == keep
    assert summary["metric"] == "bpb"
    assert math.isclose(summary["pruned_bpb"], summary["pruned_loss"] / math.log(2))
    assert summary["dense_bpb"] < 8.0  # better than uniform over 256 bytes
    state = torch.load(tmp_path / "straight" / "model.pt")
    blocks = [k for k in state if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))]
    assert len(blocks) == 8
    assert sum(int(state[k].count_nonzero()) for k in blocks) == keep
    assert int(state["transformer.wte.weight"].count_nonzero()) == 256 * 32  # dense head

    interrupt_training(3)  # inside the ADMM iterations
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(code_corpus), run_dir=tmp_path / "resumed")
    interrupt_training(None)
    run_pipeline(config(code_corpus), run_dir=tmp_path / "resumed", resume=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(state[k], resumed[k]) for k in state)
