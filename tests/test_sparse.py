"""Sparse inference: sparsify() swaps pruned Linear layers for CSR modules that match dense."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune.export.sparse import SparseLinear, sparse_layers, sparsify


def pruned_linear(inp: int, out: int, keep: float, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(inp, out)
    with torch.no_grad():
        layer.weight.masked_fill_(torch.rand_like(layer.weight) >= keep, 0)
    return layer


@pytest.mark.parametrize("single,batched", [(True, True), (True, False), (False, True)])
def test_sparse_linear_matches_dense_in_both_regimes(single, batched):
    layer = pruned_linear(300, 200, keep=0.05)
    sparse = SparseLinear(layer, single, batched)
    with torch.no_grad():
        for shape in ((1, 300), (64, 300), (2, 5, 300), (300,)):
            x = torch.randn(*shape)
            torch.testing.assert_close(sparse(x), layer(x), atol=1e-5, rtol=1e-5)


def test_sparsify_without_calibration_replaces_only_sparse_linear_layers():
    torch.manual_seed(0)
    model = nn.Sequential(pruned_linear(400, 300, keep=0.02), nn.ReLU(),
                          nn.Linear(300, 100),  # dense: stays
                          nn.ReLU(), pruned_linear(100, 10, keep=0.1, seed=1))
    x = torch.randn(64, 400)
    with torch.no_grad():
        want = model(x)
        want1 = model(x[:1])
        sparsify(model, calibrate=False)
        assert [n for n, _ in sparse_layers(model)] == ["0", "4"]
        assert type(model[2]) is nn.Linear
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x[:1]), want1, atol=1e-5, rtol=1e-5)


def test_calibration_keeps_sparse_where_it_measures_a_gain():
    # 99% sparse 2048x2048: CSR beats dense by ~10x here; a 16x16 layer never gains
    big = pruned_linear(2048, 2048, keep=0.01)
    model = nn.Sequential(big, nn.ReLU(), pruned_linear(2048, 16, keep=0.3),
                          nn.ReLU(), pruned_linear(16, 16, keep=0.4, seed=2))
    x = torch.randn(8, 2048)
    with torch.no_grad():
        want = model(x)
        sparsify(model, batch=8)
        layers = dict(sparse_layers(model))
        assert "0" in layers and layers["0"].sparse_single and layers["0"].sparse_batched
        assert type(model[4]) is nn.Linear  # too small to gain
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def test_sparsified_lenet5_matches_the_dense_model():
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5").eval()
    for _, p in admmprune.prunable_parameters(model):
        with torch.no_grad():
            p.masked_fill_(torch.rand_like(p) > 0.05, 0)
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        want, want1 = model(x), model(x[:1])
        sparse = sparsify(model, calibrate=False)
        assert len(sparse_layers(sparse)) == 2  # fc1, fc2; convolutions stay dense
        torch.testing.assert_close(sparse(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sparse(x[:1]), want1, atol=1e-5, rtol=1e-5)
    assert admmprune.sparsify is sparsify


def test_a_bad_batch_is_refused():
    with pytest.raises(ValueError, match="batch"):
        sparsify(nn.Linear(3, 3), batch=1)


def test_gpt2_conv1d_layers_are_sparsified_and_match_dense():
    from admmprune import ADMMPruner
    from admmprune.models import create_model

    torch.manual_seed(0)
    gpt = create_model("gpt", n_layer=2, n_embd=32, n_head=2, context=16).eval()
    ADMMPruner(gpt, 90.0).hard_prune()
    tokens = torch.randint(256, (3, 16))
    with torch.no_grad():
        want, want1 = gpt(tokens), gpt(tokens[:1, :1])
        sparsify(gpt, calibrate=False)
        replaced = sparse_layers(gpt)
        # every Conv1D of the blocks (c_attn, c_proj, c_fc, mlp c_proj), stored [in, out]
        assert len(replaced) == 8
        c_fc = next(m for n, m in replaced if n.endswith("mlp.c_fc"))
        assert (c_fc.in_features, c_fc.out_features) == (32, 128)
        torch.testing.assert_close(gpt(tokens), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpt(tokens[:1, :1]), want1, atol=1e-4, rtol=1e-4)
