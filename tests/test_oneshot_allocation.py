"""Global allocation of one budget: the greedy over marginal costs against a brute force over
every split, its tie rule, exact budgets, integer counts for per-layer ratios, the convex
envelope of a measured curve, and error curves measured with the layer solvers."""

from __future__ import annotations

import itertools

import pytest
import torch

from admmprune.posttraining.allocation import (
    AllocationError,
    allocate_global,
    counts_for_percents,
    error_curve,
    marginal_costs,
)
from admmprune.posttraining.owl import owl_ratios
from admmprune.posttraining.reconstruct import admm_reconstruct, reconstruction_error
from admmprune.projection import ProjectionError, survivor_count


def brute_force(costs: list[torch.Tensor], keep: int) -> tuple[float, list[int]]:
    """The cheapest split by enumeration: every (r_1, ..., r_L) with Σ r = N − K."""
    sizes = [c.numel() for c in costs]
    prefix = [torch.cat([torch.zeros(1, dtype=torch.float64), c.cumsum(0)]) for c in costs]
    best: tuple[float, list[int]] = (float("inf"), [])
    for removed in itertools.product(*(range(n + 1) for n in sizes)):
        if sum(removed) == sum(sizes) - keep:
            cost = sum(float(p[r]) for p, r in zip(prefix, removed, strict=True))
            if cost < best[0]:
                best = (cost, [n - r for n, r in zip(sizes, removed, strict=True)])
    return best


def split_cost(costs, kept):
    return sum(float(c[: c.numel() - k].sum()) for c, k in zip(costs, kept, strict=True))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_brute_force_on_convex_curves(seed):
    g = torch.Generator().manual_seed(seed)
    costs = [torch.rand(n, generator=g, dtype=torch.float64).sort().values * scale
             for n, scale in ((3, 1.0), (4, 2.0), (2, 0.5), (3, 3.0))]
    total = sum(c.numel() for c in costs)
    for keep in range(total + 1):
        kept = allocate_global(costs, keep)
        assert sum(kept) == keep
        best_cost, best_kept = brute_force(costs, keep)
        assert split_cost(costs, kept) == pytest.approx(best_cost, abs=1e-12)
        assert kept == best_kept  # distinct random costs: a unique optimum


def test_ties_go_to_the_earlier_layer_first():
    costs = [torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.5])]
    # removals by cost: 0.5 (layer 2), 1.0 (layer 0), then the 2.0s: layer 0's, then layer 1's
    assert allocate_global(costs, 6) == [3, 2, 1]
    assert allocate_global(costs, 4) == [2, 2, 0]
    assert allocate_global(costs, 3) == [1, 2, 0]
    assert allocate_global(costs, 2) == [0, 2, 0]
    assert allocate_global(costs, 1) == [0, 1, 0]
    assert allocate_global(costs, 0) == [0, 0, 0]


def test_bad_curves_and_budgets_are_refused():
    with pytest.raises(AllocationError, match="non-decreasing"):
        allocate_global([torch.tensor([2.0, 1.0])], 1)
    with pytest.raises(AllocationError, match="non-decreasing"):
        allocate_global([torch.tensor([float("nan")])], 1)
    with pytest.raises(AllocationError, match="keep must be"):
        allocate_global([torch.tensor([1.0, 2.0])], 3)
    with pytest.raises(AllocationError, match="infinite"):
        allocate_global([torch.tensor([1.0, float("inf")]), torch.tensor([2.0])], 0)
    with pytest.raises(AllocationError, match="1-D"):
        allocate_global([torch.ones(2, 2)], 1)
    with pytest.raises(AllocationError, match="no layers"):
        allocate_global([], 0)


def test_counts_for_percents_hit_the_budget_exactly():
    sizes = [1000, 333, 777, 10]
    for percent in (50.0, 70.0, 90.0, 99.0):
        keep = survivor_count(sum(sizes), percent)
        counts = counts_for_percents(sizes, [percent] * 4, keep)
        assert sum(counts) == keep
        assert all(abs(c - n * (1 - percent / 100)) < 1 for c, n in zip(counts, sizes,
                                                                          strict=True))
    # OWL ratios weighted by size are a split of the global budget
    block_sizes = [4096, 2048, 4096]
    ratios = owl_ratios([2.0, 5.0, 3.5], 70.0, sizes=block_sizes)
    keep = survivor_count(sum(block_sizes), 70.0)
    counts = counts_for_percents(block_sizes, ratios, keep)
    assert sum(counts) == keep
    # by hand: 0.5 + 0.5 to two layers of ideal 2.5 and 1.5 -> floors 2, 1, one unit left,
    # equal fractions: the earlier layer gets it
    assert counts_for_percents([5, 3], [50.0, 50.0], 4) == [3, 1]
    with pytest.raises(AllocationError, match="not a split"):
        counts_for_percents([100, 100], [50.0, 50.0], 150)


def test_marginal_costs_take_the_convex_envelope():
    # (10, 1) -> (20, 10) -> (30, 12) is not convex; (20, 10) lies above the chord from
    # (10, 1) to (30, 12), so the envelope is (0,0)-(10,1)-(30,12): slopes 0.1 then 0.55
    marginals = marginal_costs([10, 20, 30], [1.0, 10.0, 12.0], size=40)
    assert torch.allclose(marginals[:10], torch.full((10,), 0.1, dtype=torch.float64))
    assert torch.allclose(marginals[10:30], torch.full((20,), 0.55, dtype=torch.float64))
    assert bool(torch.isinf(marginals[30:]).all())
    # the envelope keeps the measured end point: 30 removals cost 12
    assert float(marginals[:30].sum()) == pytest.approx(12.0)
    with pytest.raises(AllocationError, match="within"):
        marginal_costs([10, 50], [1.0, 2.0], size=40)


def correlated_layer(out, inputs, seed, sensitivity=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * inputs, inputs, generator=g, dtype=torch.float64) \
        @ torch.randn(inputs, inputs, generator=g, dtype=torch.float64)
    weight = torch.randn(out, inputs, generator=g, dtype=torch.float64)
    return weight, sensitivity * (x.t() @ x)


def test_error_curve_matches_direct_solves_and_grows():
    weight, gram = correlated_layer(8, 16, seed=0)
    percents = [0.0, 30.0, 60.0, 90.0]
    curve = error_curve(weight, gram, percents, "admm")
    for p, e in zip(percents[1:], curve[1:], strict=True):
        new, _ = admm_reconstruct(weight, gram, keep=survivor_count(weight.numel(), p))
        assert float(e) == pytest.approx(reconstruction_error(weight, new, gram), rel=1e-12)
    assert float(curve[0]) < 1e-6 * float(curve[1])  # keeping all: W back
    assert bool((curve[1:] > curve[:-1]).all())
    for method in ("sparsegpt", "wanda", "magnitude"):
        other = error_curve(weight, gram, percents[1:], method)
        assert bool((other >= curve[1:]).all()), method  # ADMM reconstructs best
    zeroed = error_curve(weight, gram, [50.0], lambda w, h, p, d: 0 * w)
    assert float(zeroed[0]) == pytest.approx(float((weight @ gram * weight).sum()))
    with pytest.raises(AllocationError, match="method"):
        error_curve(weight, gram, [50.0], "obs")
    with pytest.raises(ProjectionError):
        error_curve(weight, gram, [100.0])


def test_curves_to_a_global_split_favour_the_sensitive_layer():
    # two layers alike but for the scale of their inputs: errors of the second are 100x
    layers = [correlated_layer(8, 16, seed=1), correlated_layer(8, 16, 1, 100.0)]
    percents = [0.0, 20.0, 40.0, 60.0, 80.0, 95.0]
    marginals = []
    for weight, gram in layers:
        curve = error_curve(weight, gram, percents, "wanda")
        removed = [weight.numel() - survivor_count(weight.numel(), p) for p in percents]
        marginals.append(marginal_costs(removed, curve.tolist(), weight.numel()))
    keep = survivor_count(2 * 128, 70.0)
    kept = allocate_global(marginals, keep)
    assert sum(kept) == keep
    assert kept[1] > kept[0]
