"""The ADMM maths in admmprune.admm: penalty gradients, dual updates, rho schedules, residuals."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from admmprune import admm as admm_module
from admmprune.admm import (
    Residuals,
    admm_penalty,
    balanced_rho,
    fused_penalty,
    next_rho,
    project,
    rescale_dual,
    residuals,
    squared_norm,
    update_dual,
    weight_decay_penalty,
)

FAST = settings(max_examples=50, deadline=None)

SHAPES = [(3,), (4, 5), (2, 3, 3, 3), (1,)]


def random_tensors(seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in SHAPES]


@FAST
@given(st.integers(0, 2**31 - 1), st.floats(1e-6, 1e3))
def test_admm_penalty_gradient_is_rho_times_w_minus_z_plus_u(seed, rho):
    weights = [w.requires_grad_() for w in random_tensors(seed)]
    z = random_tensors(seed + 1)
    u = random_tensors(seed + 2)
    penalty = admm_penalty(weights, z, u, rho)
    grads = torch.autograd.grad(penalty, weights)
    for g, w, z_l, u_l in zip(grads, weights, z, u, strict=True):
        torch.testing.assert_close(g, rho * (w.detach() - z_l + u_l))


def test_admm_penalty_value_is_half_rho_squared_frobenius_norm():
    w = [torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]
    z = [torch.tensor([0.0, 2.0]), torch.tensor([[0.0]])]
    u = [torch.tensor([0.5, 0.0]), torch.tensor([[1.0]])]
    # W - Z + U = [1.5, 0] and [4]: squared norm 2.25 + 16 = 18.25 (not its square root)
    assert float(admm_penalty(w, z, u, rho=2.0)) == pytest.approx(0.5 * 2.0 * 18.25)


def test_admm_penalty_backward_accumulates_into_weight_grad():
    w = torch.ones(3, requires_grad=True)
    z = torch.zeros(3)
    u = torch.zeros(3)
    admm_penalty([w], [z], [u], 1.0).backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, torch.ones(3))


@FAST
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 10.0))
def test_weight_decay_penalty_gradient_is_p_lambda_times_w(seed, p_lambda):
    weights = [w.requires_grad_() for w in random_tensors(seed)]
    penalty = weight_decay_penalty(weights, p_lambda)
    grads = torch.autograd.grad(penalty, weights)
    for g, w in zip(grads, weights, strict=True):
        torch.testing.assert_close(g, p_lambda * w.detach())
    expected = 0.5 * p_lambda * sum(float(w.detach().pow(2).sum()) for w in weights)
    assert float(penalty.detach()) == pytest.approx(expected)


def test_project_and_update_dual_hand_example():
    values = [torch.tensor([3.0, -1.0, 2.0])]
    masks = [torch.tensor([True, False, True])]
    (z,) = project(values, masks)
    assert z.tolist() == [3.0, 0.0, 2.0]
    u = [torch.tensor([0.5, 0.5, 0.5])]
    w = [torch.tensor([2.0, -1.0, 2.0])]
    (u_new,) = update_dual(u, w, [z])
    assert u_new.tolist() == [0.5 - 1.0, 0.5 - 1.0, 0.5]


@FAST
@given(st.integers(0, 2**31 - 1), st.floats(1e-6, 1e3), st.floats(1e-6, 1e3))
def test_rescale_dual_keeps_the_unscaled_dual(seed, rho_old, rho_new):
    u = random_tensors(seed)
    scaled = rescale_dual(u, rho_old, rho_new)
    for before, after in zip(u, scaled, strict=True):
        torch.testing.assert_close(rho_new * after, rho_old * before)


def test_rescale_dual_with_equal_rho_changes_nothing():
    u = random_tensors(3)
    for before, after in zip(u, rescale_dual(u, 0.1, 0.1), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize(
    ("rho", "growth", "rho_max", "expected"),
    [
        (1e-3, 2.0, math.inf, 2e-3),
        (1e-3, 1.0, math.inf, 1e-3),
        (0.4, 2.0, 0.5, 0.5),
        (0.5, 2.0, 0.5, 0.5),
        (0.1, 1.3, 1.0, 0.13),
    ],
)
def test_next_rho_grows_and_caps_at_rho_max(rho, growth, rho_max, expected):
    assert next_rho(rho, growth, rho_max) == pytest.approx(expected)


@FAST
@given(st.floats(1e-6, 1.0), st.floats(1.0, 10.0), st.floats(1e-3, 100.0))
def test_next_rho_never_exceeds_rho_max_and_never_shrinks(rho, growth, rho_max):
    new = next_rho(rho, growth, rho_max)
    assert new <= rho_max
    assert new >= min(rho, rho_max)


def test_next_rho_sequence_reaches_the_cap_and_stays():
    rho, seen = 0.01, []
    for _ in range(10):
        rho = next_rho(rho, 2.0, 1.0)
        seen.append(rho)
    assert seen[:6] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.64])
    assert seen[6:] == [1.0] * 4


def test_balanced_rho_raises_when_primal_dominates():
    assert balanced_rho(1.0, primal=100.0, dual=1.0) == 2.0
    assert balanced_rho(1.0, primal=100.0, dual=1.0, tau=3.0) == 3.0


def test_balanced_rho_lowers_when_dual_dominates():
    assert balanced_rho(1.0, primal=1.0, dual=100.0) == 0.5


def test_balanced_rho_keeps_rho_when_residuals_are_balanced():
    assert balanced_rho(0.7, primal=5.0, dual=1.0) == 0.7
    assert balanced_rho(0.7, primal=1.0, dual=5.0) == 0.7
    assert balanced_rho(0.7, primal=0.0, dual=0.0) == 0.7


def test_balanced_rho_respects_rho_max():
    assert balanced_rho(1.0, primal=100.0, dual=1.0, rho_max=1.5) == 1.5


def test_residuals_hand_example():
    w = [torch.tensor([[3.0, 4.0]]), torch.tensor([1.0])]
    z = [torch.tensor([[0.0, 4.0]]), torch.tensor([1.0])]
    z_prev = [torch.tensor([[0.0, 0.0]]), torch.tensor([4.0])]
    res = residuals(w, z, z_prev, rho=0.5)
    assert isinstance(res, Residuals)
    # primal: ||W - Z|| = ||(3, 0, 0)|| = 3; dual: rho·||Z - Z_prev|| = 0.5·||(0, 4, -3)|| = 2.5
    assert res.primal == pytest.approx(3.0)
    assert res.dual == pytest.approx(2.5)


def test_residuals_are_zero_at_a_fixed_point():
    w = random_tensors(5)
    res = residuals(w, [x.clone() for x in w], [x.clone() for x in w], rho=10.0)
    assert res.primal == 0.0
    assert res.dual == 0.0


# -- the fused penalty: same value and gradient as the plain formulas --------------------------


def fused_case(seed: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    # one tensor larger than a CPU slice, one channels_last (non-contiguous) kernel
    shapes = [(3,), (700, 500), (4, 3, 5, 5)]
    weights = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    weights[2] = weights[2].contiguous(memory_format=torch.channels_last)
    weights = [w.requires_grad_() for w in weights]
    z = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    u = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
    return weights, z, u


def test_the_cpu_slices_are_exercised():
    assert 700 * 500 > admm_module._CHUNK


@pytest.mark.parametrize(("rho", "p_lambda", "scale"), [(0.3, 0.0, 1.0), (2.0, 0.05, 1.0),
                                                        (1e-3, 0.01, -2.5)])
def test_fused_penalty_matches_the_plain_formulas(rho, p_lambda, scale):
    weights, z, u = fused_case(7)
    expected = admm_penalty(weights, z, u, rho) + weight_decay_penalty(weights, p_lambda)
    want = torch.autograd.grad(scale * expected, weights)
    anchors = [a - b for a, b in zip(z, u, strict=True)]
    value = fused_penalty(weights, anchors, rho, p_lambda)
    got = torch.autograd.grad(scale * value, weights)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    for g, w, p in zip(got, want, weights, strict=True):
        torch.testing.assert_close(g, w)
        assert g.stride() == p.stride()  # grads keep the weights' layout (channels_last)


def test_fused_penalty_in_float32_against_float64():
    weights, z, u = fused_case(8, dtype=torch.float32)
    value = fused_penalty(weights, [a - b for a, b in zip(z, u, strict=True)], 0.5, 0.1)
    exact = admm_penalty([w.detach().double() for w in weights], [t.double() for t in z],
                         [t.double() for t in u], 0.5) + \
        weight_decay_penalty([w.detach().double() for w in weights], 0.1)
    assert float(value.detach()) == pytest.approx(float(exact), rel=1e-5)


def test_fused_penalty_accumulates_into_grad_and_survives_retain_graph():
    weights, z, u = fused_case(9)
    anchors = [a - b for a, b in zip(z, u, strict=True)]
    value = fused_penalty(weights, anchors, 0.7, 0.2)
    value.backward(retain_graph=True)
    value.backward()  # the second backward rebuilds the gradients
    for w, a in zip(weights, anchors, strict=True):
        torch.testing.assert_close(w.grad, 2 * (0.7 * (w.detach() - a) + 0.2 * w.detach()))


def test_fused_penalty_only_for_the_tensors_that_need_a_gradient():
    weights, z, u = fused_case(10)
    weights[0].requires_grad_(False)
    value = fused_penalty(weights, z, 1.0)
    value.backward()
    assert weights[0].grad is None and weights[1].grad is not None
    expected = admm_penalty(weights, z, [torch.zeros_like(t) for t in u], 1.0)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


def test_fused_penalty_without_anchors_is_the_l2_term_and_no_grad_gives_the_value():
    weights, _, _ = fused_case(11)
    value = fused_penalty(weights, None, 5.0, p_lambda=0.4)
    expected = weight_decay_penalty(weights, 0.4)
    assert float(value.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    with torch.no_grad():
        assert float(fused_penalty(weights, None, 0.0, 0.4)) == pytest.approx(
            float(expected.detach()), rel=1e-12)


def test_squared_norm_hand_example():
    a = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0]])]
    b = [torch.tensor([0.0, 4.0]), torch.tensor([[-1.0]])]
    assert squared_norm(a) == 26.0
    assert squared_norm(a, b) == 13.0
