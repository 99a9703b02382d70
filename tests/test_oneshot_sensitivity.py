"""Output sensitivities (the loss's squared gradients per layer output) and the weighted
reconstruction error a global allocation compares layers by."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune.models import create_model
from admmprune.posttraining.errors import OneShotError
from admmprune.posttraining.sensitivity import (
    next_token_loss,
    output_sensitivities,
    weighted_error,
)


def _tiny_llama():
    torch.manual_seed(0)
    return create_model("llama", n_layer=2, n_embd=16, n_head=2, n_kv_head=1,
                        intermediate=24, context=8).eval()


def test_sensitivities_are_the_squared_output_gradients_computed_directly():
    model = _tiny_llama()
    layers = [model.model.layers[0].self_attn.q_proj, model.model.layers[1].mlp.down_proj]
    batches = [torch.randint(256, (3, 8)) for _ in range(2)]
    got = output_sensitivities(model, [(m, m.out_features) for m in layers], batches)
    want = [torch.zeros(m.out_features, dtype=torch.float64) for m in layers]
    for x in batches:  # by hand: keep each layer's output and ask autograd for its gradient
        outputs = []
        handles = [m.register_forward_hook(lambda mod, i, o, kept=outputs: kept.append(o))
                   for m in layers]
        with torch.enable_grad():
            embedded = model.model.embed_tokens(x).detach().requires_grad_(True)
            handle = model.model.embed_tokens.register_forward_hook(
                lambda m, i, o, leaf=embedded: leaf)
            loss = next_token_loss(model(x), x)
            grads = torch.autograd.grad(loss, outputs)
        handle.remove()
        for h in handles:
            h.remove()
        for k, g in enumerate(grads):
            want[k] += g.double().reshape(-1, g.shape[-1]).pow(2).sum(0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w / len(batches))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_micro_batches_change_memory_not_the_sensitivities():
    model = _tiny_llama()
    layers = [model.model.layers[0].self_attn.v_proj, model.model.layers[1].mlp.gate_proj]
    pairs = [(m, m.out_features) for m in layers]
    batches = [torch.randint(256, (5, 8)) for _ in range(2)]
    whole = output_sensitivities(model, pairs, batches, micro_batch=None)
    for size in (1, 2, 4):  # 5 sequences: uneven slices too
        sliced = output_sensitivities(model, pairs, batches, micro_batch=size)
        for a, b in zip(sliced, whole, strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(OneShotError, match="micro_batch must be at least 1"):
        output_sensitivities(model, pairs, batches, micro_batch=0)


def test_pairs_use_their_targets_and_a_custom_loss():
    model = _tiny_llama()
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randint(256, (2, 8))
    shifted = output_sensitivities(model, [(layer, 24)], [x])
    # (x, y) with y the next tokens: the same loss on the first 7 positions
    pairs = output_sensitivities(model, [(layer, 24)], [(x[:, :-1], x[:, 1:])])
    assert pairs[0].shape == shifted[0].shape and bool((pairs[0] > 0).any())
    custom = output_sensitivities(model, [(layer, 24)], [x],
                                  loss_fn=lambda out, y: 2 * next_token_loss(out, y))
    torch.testing.assert_close(custom[0], 4 * shifted[0])  # gradients double, squares x4


def test_weighted_error_is_half_the_sensitivity_weighted_output_error():
    torch.manual_seed(1)
    x = torch.randn(50, 6, dtype=torch.float64)
    delta = torch.randn(4, 6, dtype=torch.float64)
    g = torch.rand(4, dtype=torch.float64)
    direct = 0.5 * float((g * (x @ delta.t()).pow(2).sum(0)).sum())
    assert weighted_error(delta, x.t() @ x, g) == pytest.approx(direct, rel=1e-12)


def test_empty_batches_and_non_finite_losses_are_refused():
    model = _tiny_llama()
    layer = model.model.layers[0].mlp.up_proj
    with pytest.raises(OneShotError, match="no calibration batch"):
        output_sensitivities(model, [(layer, 24)], [])
    with torch.no_grad():
        model.model.embed_tokens.weight[0] = float("nan")
    with pytest.raises(OneShotError, match="NaN"):
        output_sensitivities(model, [(layer, 24)], [torch.zeros(1, 8, dtype=torch.long)])
    with pytest.raises(OneShotError, match="never reached"):
        output_sensitivities(nn.Sequential(nn.Linear(2, 2)), [(nn.Linear(2, 2), 2)],
                             [(torch.randn(1, 2), torch.zeros(1, dtype=torch.long))],
                             loss_fn=lambda out, y: out.sum())
