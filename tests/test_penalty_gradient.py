"""The gradient form of the penalty (``ADMMPruner.add_penalty_gradients``) against autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune import ADMMPruner
from admmprune.admm import add_penalty_gradient, fused_penalty


def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return admmprune.create_model("lenet5")


@torch.no_grad()
def move(pruner: ADMMPruner, seed: int) -> None:
    """A stand-in for a W-step: the weights leave Z, so W − Z + U is not 0."""
    generator = torch.Generator().manual_seed(seed)
    for p in pruner.params:
        p.add_(0.05 * torch.randn(p.shape, generator=generator))


def autograd_gradients(pruner: ADMMPruner) -> list[torch.Tensor]:
    params = [p for p in pruner.params if p.requires_grad]
    value = pruner.penalty()
    if not value.requires_grad:  # the constant 0 after the hard prune without p_lambda
        return [torch.zeros_like(p) for p in params]
    return list(torch.autograd.grad(value, params))


def added_gradients(pruner: ADMMPruner, start: list[torch.Tensor] | None = None
                    ) -> list[torch.Tensor]:
    params = [p for p in pruner.params if p.requires_grad]
    for i, p in enumerate(params):
        p.grad = None if start is None else start[i].clone()
    pruner.add_penalty_gradients()
    # nothing to add (after the hard prune without p_lambda) leaves .grad alone
    out = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


@pytest.mark.parametrize("p_lambda", [0.0, 0.05])
def test_gradient_form_equals_the_autograd_gradient_before_and_after_the_hard_prune(p_lambda):
    model = lenet()
    pruner = ADMMPruner(model, all_percent=90.0, rho=0.3, p_lambda=p_lambda, rho_growth=2.0)
    move(pruner, seed=1)
    pruner.admm_step()  # U != 0, rho grown
    move(pruner, seed=2)
    assert any(float(u.abs().sum()) > 0 for u in pruner.u)
    for got, want in zip(added_gradients(pruner), autograd_gradients(pruner), strict=True):
        assert float((got - want).abs().max()) <= 1e-6
    pruner.hard_prune()
    move(pruner, seed=3)
    pruner.enforce()
    got, want = added_gradients(pruner), autograd_gradients(pruner)
    for g, w, m in zip(got, want, pruner.masks, strict=True):
        assert float((g - w).abs().max()) <= 1e-6
        assert not bool(g[~m].any())  # pruned entries get nothing
    assert any(bool(g.any()) for g in got) == (p_lambda > 0)


def test_gradient_form_adds_to_the_existing_gradient_and_skips_frozen_weights():
    model = lenet(seed=3)
    pruner = ADMMPruner(model, all_percent=80.0, rho=0.5, include=["conv1", "fc1", "fc2"])
    model.fc2.weight.requires_grad_(False)  # frozen after selection: no gradient
    move(pruner, seed=4)
    generator = torch.Generator().manual_seed(5)
    start = [torch.randn(p.shape, generator=generator) for p in pruner.params
             if p.requires_grad]
    got = added_gradients(pruner, start)
    want = autograd_gradients(pruner)
    assert len(got) == len(pruner.params) - 1
    for g, s, w in zip(got, start, want, strict=True):
        assert float((g - s - w).abs().max()) <= 1e-6
    assert model.fc2.weight.grad is None


def test_pure_function_matches_the_fused_node_on_non_contiguous_tensors():
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(6, 5, generator=generator).t().requires_grad_(),  # a view
               torch.randn(300_000, generator=generator).requires_grad_()]  # > one CPU slice
    anchors = [torch.randn(w.shape, generator=generator) for w in weights]
    want = torch.autograd.grad(fused_penalty(weights, anchors, 0.7, 0.1), weights)
    grads = [torch.zeros(w.shape) for w in weights]
    add_penalty_gradient([w.detach() for w in weights], grads, anchors, 0.7, 0.1)
    for g, w in zip(grads, want, strict=True):
        assert float((g - w).abs().max()) <= 1e-6
    with pytest.raises(ValueError, match="shape"):
        add_penalty_gradient(weights[:1], [torch.zeros(3)], anchors[:1], 1.0)


def test_a_held_mask_gets_no_gradient_in_a_later_stage():
    """Progressive stage 2 keeps stage 1's mask: like the fused penalty's gradient, which the
    mask hooks zero in backward, the added term is 0 at pruned entries (no optimizer state
    builds up there) and equals autograd's elsewhere."""
    pruner = ADMMPruner(lenet(), all_percent=80.0, rho=1e-2)
    move(pruner, 1)
    pruner.admm_step()
    pruner.hard_prune()
    pruner.start_stage(90.0)
    move(pruner, 2)
    pruner.admm_step()
    want = autograd_gradients(pruner)  # through the hooks: 0 at pruned entries
    got = added_gradients(pruner)
    for g, w, mask in zip(got, want, pruner.masks, strict=True):
        assert torch.equal(g[~mask], torch.zeros_like(g[~mask]))
        assert torch.allclose(g, w, atol=1e-6)
