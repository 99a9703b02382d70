"""SparseGPT: the sweep against a direct optimal-brain-surgeon computation (explicit inverses
of the remaining columns' Hessian), exact counts, 2:4, HF Conv1D layout, reconstruction
better than zeroing, and ``pruning: sparsegpt`` through the pipeline on a tiny GPT."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from admmprune.posttraining.activations import input_grams
from admmprune.posttraining.sparsegpt import (
    SparseGPTError,
    hessian_inverse_factor,
    sparsegpt_prune,
    sparsegpt_prune_model,
)
from admmprune.posttraining.wanda import row_masks, wanda_scores
from admmprune.projection import survivor_count
from admmprune.runs.compare import METHODS, fixed_percent, method_config
from admmprune.runs.config import ConfigError
from admmprune.runs.pipeline import run_pipeline

PRUNED = ("c_attn.weight", "c_proj.weight", "c_fc.weight")


def correlated_inputs(tokens=200, features=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=g)
    return torch.randn(tokens, features, generator=g, dtype=torch.float64) @ mixing.double()


def direct_sparsegpt(weight, x, percent=None, nm=None, block_size=128, damp=0.01):
    """SparseGPT written out: H = XᵀX + λI; the saliency and the update of column j use
    the inverse of H restricted to the columns j.. (inverted explicitly, every time)."""
    w = weight.double().clone()
    n_in = w.shape[1]
    h = x.t() @ x
    h += damp * torch.diag(h).mean() * torch.eye(n_in, dtype=torch.float64)
    inverses = [torch.linalg.inv(h[j:, j:]) for j in range(n_in)]
    mask = torch.ones_like(w, dtype=torch.bool)
    to_remove = 0 if percent is None else w.numel() - survivor_count(w.numel(), percent)
    removed = 0
    for j in range(n_in):
        d = inverses[j][0, 0]
        if percent is not None and j % block_size == 0:
            end = min(j + block_size, n_in)
            diag = torch.tensor([inverses[i][0, 0] for i in range(j, end)], dtype=torch.float64)
            saliency = w[:, j:end].pow(2) / diag
            count = round(to_remove * end / n_in) - removed
            lowest = torch.argsort(saliency.flatten(), stable=True)[:count]
            block = torch.ones_like(saliency, dtype=torch.bool)
            block.view(-1)[lowest] = False
            mask[:, j:end] = block
            removed += count
        if nm is not None and j % nm[1] == 0:
            diag = torch.tensor([inverses[i][0, 0] for i in range(j, j + nm[1])],
                                dtype=torch.float64)
            saliency = w[:, j:j + nm[1]].pow(2) / diag
            lowest = torch.argsort(saliency, dim=1, stable=True)[:, :nm[1] - nm[0]]
            mask[:, j:j + nm[1]].scatter_(1, lowest, False)
        for r in torch.nonzero(~mask[:, j]).flatten():
            w[r, j:] -= w[r, j] / d * inverses[j][0, :]
    return w, mask


@pytest.mark.parametrize("block_size", [128, 4])
def test_the_sweep_equals_the_direct_computation(block_size):
    x = correlated_inputs()
    weight = torch.randn(7, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    new, mask = sparsegpt_prune(weight, x.t() @ x, all_percent=60.0, block_size=block_size)
    expected, expected_mask = direct_sparsegpt(weight, x, percent=60.0, block_size=block_size)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(new, expected, atol=1e-9)
    assert int(mask.sum()) == survivor_count(weight.numel(), 60.0)
    assert (new[~mask] == 0).all()


def test_two_of_four_equals_the_direct_computation_and_keeps_the_pattern():
    x = correlated_inputs()
    weight = torch.randn(5, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    new, mask = sparsegpt_prune(weight, x.t() @ x, nm=(2, 4))
    expected, expected_mask = direct_sparsegpt(weight, x, nm=(2, 4))
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(new, expected, atol=1e-9)
    assert (mask.view(5, 3, 4).sum(dim=2) == 2).all()


def test_the_factor_rows_hold_the_remaining_columns_inverses():
    x = correlated_inputs(features=6)
    factor = hessian_inverse_factor(x.t() @ x)
    h = x.t() @ x
    h += 0.01 * torch.diag(h).mean() * torch.eye(6, dtype=torch.float64)
    for j in range(6):
        inverse = torch.linalg.inv(h[j:, j:])
        assert torch.allclose(factor[j, j:], inverse[0] / inverse[0, 0].sqrt(), atol=1e-10)


def test_reconstruction_beats_zeroing_the_same_share():
    x = correlated_inputs(tokens=400, features=16)
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    new, mask = sparsegpt_prune(weight, x.t() @ x, all_percent=50.0)
    wanda = row_masks(wanda_scores(weight, x.norm(dim=0)), 50.0)

    def error(w):
        return (x @ (weight - w).t()).norm()

    assert error(new) < error(weight * mask)  # the update, not only the choice, helps
    assert error(new) < error(weight * wanda)


def test_conv1d_layout_gives_the_transposed_result():
    x = correlated_inputs()
    weight = torch.randn(7, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    new, mask = sparsegpt_prune(weight, x.t() @ x, all_percent=50.0)
    new_t, mask_t = sparsegpt_prune(weight.t().contiguous(), x.t() @ x, all_percent=50.0,
                                    input_dim=0)
    assert torch.equal(mask_t, mask.t()) and torch.allclose(new_t, new.t())


def test_zero_percent_changes_nothing_and_bad_input_is_refused():
    x = correlated_inputs()
    weight = torch.randn(7, 12, dtype=torch.float64)
    new, mask = sparsegpt_prune(weight, x.t() @ x, all_percent=0.0)
    assert mask.all() and torch.allclose(new, weight)
    with pytest.raises(SparseGPTError, match="exactly one"):
        sparsegpt_prune(weight, x.t() @ x)
    with pytest.raises(SparseGPTError, match="Gram matrix"):
        sparsegpt_prune(weight, torch.eye(5), all_percent=50.0)
    with pytest.raises(SparseGPTError, match="multiple of M"):
        sparsegpt_prune(weight, x.t() @ x, nm=(2, 4), block_size=6)


def two_layers_and_batches(seed: int, count: int):
    """A Linear-ReLU-Linear model (seeded 0) and ``count`` calibration batches of 32."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(seed)
    return model, [(torch.randn(32, 8, generator=g), None) for _ in range(count)]


def test_model_pruning_rewrites_the_weights_in_place():
    model, batches = two_layers_and_batches(5, 3)
    (gram, _) = input_grams(model, [model[0], model[2]], batches)
    x = torch.cat([b for b, _ in batches]).double()
    assert torch.allclose(gram, x.t() @ x)
    dense = model[0].weight.detach().clone()
    masks = sparsegpt_prune_model(model, batches, all_percent=75.0)
    assert [int(m.sum()) for m in masks] == [32, 16]
    assert (model[0].weight[~masks[0]] == 0).all()
    assert not torch.equal(model[0].weight[masks[0]], dense[masks[0]])  # reconstructed
    with pytest.raises(SparseGPTError, match="exclude it"):
        sparsegpt_prune_model(nn.Sequential(nn.Conv2d(1, 2, 3)), batches, all_percent=50.0)


def gpt_config(corpus, **overrides):
    from conftest import tiny_gpt_config

    return tiny_gpt_config(corpus, **{"pruning": "sparsegpt", **overrides})


def test_a_tiny_gpt_is_pruned_to_exact_counts_through_the_pipeline(code_corpus, tmp_path):
    summary = run_pipeline(gpt_config(code_corpus), run_dir=tmp_path / "run")
    final = torch.load(tmp_path / "run" / "model.pt")
    dense = torch.load(tmp_path / "run" / "dense.pt")
    total = 0
    for name, weight in final.items():
        if name.endswith(PRUNED):
            assert int((weight != 0).sum()) == survivor_count(weight.numel(), 75.0), name
            assert not torch.equal(weight, dense[name] * (weight != 0)), name  # updated
            total += survivor_count(weight.numel(), 75.0)
    assert summary["complete"] and summary["kept"] == total


def test_sparsegpt_methods_and_refusals(code_corpus):
    base = gpt_config(code_corpus, pruning="admm", k_step=3, retraining_epochs=2)
    assert method_config(base, "sparsegpt-retrain", 70.0).retraining_epochs == 5
    assert method_config(base, "sparsegpt", 70.0).retraining_epochs == 0
    assert fixed_percent(base, "sparsegpt-nm") == 50.0
    assert {"sparsegpt", "sparsegpt-retrain", "sparsegpt-nm"} <= set(METHODS)
    with pytest.raises(ConfigError, match="sparsegpt prunes once"):
        gpt_config(code_corpus, structure="filter")


def test_sequential_calibration_feeds_each_layer_the_pruned_layers_before_it():
    model, batches = two_layers_and_batches(6, 4)
    dense_second = model[2].weight.detach().clone()
    one_pass_model = copy.deepcopy(model)
    one_pass = sparsegpt_prune_model(one_pass_model, batches[:3], all_percent=60.0)
    masks = sparsegpt_prune_model(model, iter(batches), all_percent=60.0, sequential=True,
                                  max_batches=3)  # an iterator: read once, cached
    x = torch.cat([b for b, _ in batches[:3]])
    with torch.no_grad():
        hidden = torch.relu(model[0](x)).double()  # the first layer as pruned
    expected, expected_mask = sparsegpt_prune(dense_second, hidden.t() @ hidden,
                                              all_percent=60.0)
    assert torch.equal(masks[1], expected_mask)
    assert torch.allclose(model[2].weight, expected.float(), atol=1e-6)
    # the first layer sees the same inputs either way; the second does not
    assert torch.equal(masks[0], one_pass[0])
    assert torch.equal(model[0].weight, one_pass_model[0].weight)
    assert not torch.allclose(model[2].weight, one_pass_model[2].weight)


def test_sequential_wanda_zeroes_each_layer_before_scoring_the_next():
    from admmprune.posttraining.wanda import wanda_masks

    model, batches = two_layers_and_batches(7, 3)
    second = model[2].weight.detach().clone()
    masks = wanda_masks(model, batches, all_percent=50.0, sequential=True)
    assert (model[0].weight[~masks[0]] == 0).all()
    hidden = torch.relu(model[0](torch.cat([b for b, _ in batches])))
    expected = row_masks(wanda_scores(second, hidden.norm(dim=0)), 50.0)
    assert torch.equal(masks[1], expected)


def test_sequential_sparsegpt_through_the_pipeline(code_corpus, tmp_path):
    summary = run_pipeline(gpt_config(code_corpus, calibration_order="sequential"),
                           run_dir=tmp_path / "run")
    final = torch.load(tmp_path / "run" / "model.pt")
    for name, weight in final.items():
        if name.endswith(PRUNED):
            assert int((weight != 0).sum()) == survivor_count(weight.numel(), 75.0), name
    assert summary["complete"]
    with pytest.raises(ConfigError, match="calibration_order must be one of"):
        gpt_config(code_corpus, calibration_order="backwards")
