"""Properties of the projections (the Z-step and the hard-prune masks) in admmprune.projection."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from admmprune.projection import (
    SCORE_FUNCTIONS,
    ProjectionError,
    compute_scores,
    global_topk_masks,
    kth_largest,
    lamp_scores,
    layerwise_topk_masks,
    magnitude_scores,
    rms_scores,
    survivor_count,
)

FAST = settings(max_examples=80, deadline=None)


# -- strategies and an independent oracle -------------------------------------------------


@st.composite
def score_lists(draw, min_tensors: int = 1, max_tensors: int = 4) -> list[torch.Tensor]:
    """Lists of small score tensors: float32/float64, 1-3 dims, some tie-heavy, some views.

    Non-contiguous (transposed) views are included because real weights can be
    non-contiguous (channels_last convolutions, transposed/tied weights).
    """
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    tensors = []
    for _ in range(draw(st.integers(min_tensors, max_tensors))):
        shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
        numel = math.prod(shape)
        kind = draw(st.sampled_from(["continuous", "ties", "near_ties"]))
        if kind == "ties":
            elements = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
        elif kind == "near_ties" and dtype == torch.float64:
            # distinct float64 values that float32 cannot tell apart
            elements = st.integers(0, 3).map(lambda i: 1.0 + i * 1e-12)
        else:
            width = 32 if dtype == torch.float32 else 64
            elements = st.floats(-1e3, 1e3, allow_nan=False, width=width)
        values = draw(st.lists(elements, min_size=numel, max_size=numel))
        tensor = torch.tensor(values, dtype=dtype).reshape(shape)
        if tensor.dim() >= 2 and draw(st.booleans()):
            tensor = tensor.transpose(0, -1)  # a (usually) non-contiguous view
        tensors.append(tensor)
    return tensors


def flat_list(tensors: list[torch.Tensor]) -> list[float]:
    """All entries in (tensor order, row-major) order, as Python floats (exact)."""
    return [float(v) for t in tensors for v in t.reshape(-1).tolist()]


def oracle_keep_positions(scores: list[torch.Tensor], keep: int) -> set[int]:
    """Positions kept by the documented rule: largest scores, ties to the first in order."""
    values = flat_list(scores)
    ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return set(ranked[:keep])


def kept_positions(masks: list[torch.Tensor]) -> set[int]:
    flags = [bool(v) for m in masks for v in m.reshape(-1).tolist()]
    return {i for i, f in enumerate(flags) if f}


@st.composite
def scores_and_keep(draw):
    scores = draw(score_lists())
    total = sum(s.numel() for s in scores)
    return scores, draw(st.integers(0, total))


# -- global_topk_masks ------------------------------------------------------------------------


@FAST
@given(scores_and_keep())
def test_global_topk_keeps_exactly_k(case):
    scores, keep = case
    masks = global_topk_masks(scores, keep)
    assert len(masks) == len(scores)
    for m, s in zip(masks, scores, strict=True):
        assert m.dtype == torch.bool
        assert m.shape == s.shape
    assert sum(int(m.sum()) for m in masks) == keep


@FAST
@given(scores_and_keep())
def test_global_topk_every_kept_score_at_least_every_dropped_score(case):
    scores, keep = case
    masks = global_topk_masks(scores, keep)
    values = flat_list(scores)
    kept = kept_positions(masks)
    kept_values = [values[i] for i in kept]
    dropped_values = [values[i] for i in range(len(values)) if i not in kept]
    if kept_values and dropped_values:
        assert min(kept_values) >= max(dropped_values)


@FAST
@given(scores_and_keep())
def test_global_topk_matches_the_documented_tie_rule(case):
    scores, keep = case
    masks = global_topk_masks(scores, keep)
    assert kept_positions(masks) == oracle_keep_positions(scores, keep)


@pytest.mark.parametrize("keep", [0, 1, 5, 11, 17, 23, 24])
def test_all_equal_scores_keep_the_first_k_in_tensor_then_row_major_order(keep):
    # second tensor is a transposed (non-contiguous) view: row-major means *logical* order
    scores = [torch.full((2, 3), 0.7), torch.full((4, 3), 0.7).t(), torch.full((6,), 0.7)]
    masks = global_topk_masks(scores, keep)
    flags = [bool(v) for m in masks for v in m.reshape(-1).tolist()]
    assert flags == [True] * keep + [False] * (24 - keep)


def test_all_equal_scores_in_channels_last_conv_weight():
    weight = torch.ones(4, 3, 2, 2).to(memory_format=torch.channels_last)
    assert not weight.is_contiguous()
    (mask,) = global_topk_masks([weight], 10)
    assert int(mask.sum()) == 10
    assert mask.reshape(-1).tolist() == [True] * 10 + [False] * 38


def test_float64_scores_closer_than_float32_resolution():
    scores = [torch.tensor([1.0, 1.0 + 1e-10, 1.0 + 2e-10], dtype=torch.float64)]
    (mask,) = global_topk_masks(scores, 1)
    assert mask.tolist() == [False, False, True]
    (mask,) = global_topk_masks(scores, 2)
    assert mask.tolist() == [False, True, True]


def test_global_topk_rejects_impossible_keep_and_empty_lists():
    scores = [torch.rand(3), torch.rand(2)]
    with pytest.raises(ProjectionError, match="cannot keep"):
        global_topk_masks(scores, 6)
    with pytest.raises(ProjectionError, match="cannot keep"):
        global_topk_masks(scores, -1)
    with pytest.raises(ProjectionError, match="no tensors"):
        global_topk_masks([], 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("keep", [1, 3, 5])
def test_non_finite_scores_raise(bad, keep):
    scores = [torch.rand(2, 2), torch.tensor([0.5, bad])]
    with pytest.raises(ProjectionError, match="NaN or infinite"):
        global_topk_masks(scores, keep)


# -- global versus per-layer ---------------------------------------------------------------------


@FAST
@given(
    st.lists(st.integers(1, 60), min_size=1, max_size=5),
    st.floats(0, 99.9, allow_nan=False),
    st.integers(0, 2**31 - 1),
)
def test_layerwise_keeps_the_rounded_share_of_every_layer(sizes, percent, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = [torch.rand(n, generator=generator) for n in sizes]
    expected = [n - round(percent * n / 100) for n in sizes]
    if any(e <= 0 for e in expected):
        with pytest.raises(ProjectionError):
            layerwise_topk_masks(scores, percent)
        return
    masks = layerwise_topk_masks(scores, percent)
    assert [int(m.sum()) for m in masks] == expected
    for s, m, e in zip(scores, masks, expected, strict=True):
        # inside a layer, the kept ones are the layer's own largest
        assert set(torch.nonzero(m).reshape(-1).tolist()) == oracle_keep_positions([s], e)


def test_layerwise_accepts_one_ratio_per_layer_and_checks_the_count():
    scores = [torch.arange(10.0), torch.arange(20.0)]
    masks = layerwise_topk_masks(scores, [30.0, 75.0])
    assert [int(m.sum()) for m in masks] == [7, 5]
    assert masks[0].tolist() == [False] * 3 + [True] * 7
    assert masks[1].tolist() == [False] * 15 + [True] * 5
    with pytest.raises(ProjectionError, match="2 prunable tensors"):
        layerwise_topk_masks(scores, [30.0])


def test_global_and_layerwise_differ_on_a_constructed_case():
    big = torch.tensor([10.0, 9.0, 8.0, 7.0])
    small = torch.tensor([1.0, 2.0, 3.0, 4.0])
    keep = survivor_count(8, 50.0)
    assert keep == 4
    global_masks = global_topk_masks([big, small], keep)
    assert global_masks[0].tolist() == [True] * 4
    assert global_masks[1].tolist() == [False] * 4
    layer_masks = layerwise_topk_masks([big, small], 50.0)
    assert layer_masks[0].tolist() == [True, True, False, False]
    assert layer_masks[1].tolist() == [False, False, True, True]
    assert sum(int(m.sum()) for m in layer_masks) == keep


# -- survivor_count and kth_largest -----------------------------------------------------------


def test_survivor_count_hand_examples():
    assert survivor_count(1000, 0) == 1000
    assert survivor_count(1000, 99.0) == 10
    assert survivor_count(430500, 99.0) == 4305
    assert survivor_count(10, 25.0) == 8  # round(2.5) = 2 (half to even)
    assert survivor_count(10, 35.0) == 6  # round(3.5) = 4
    assert survivor_count(3, 50.0) == 1  # round(1.5) = 2


@FAST
@given(st.integers(1, 10**7), st.floats(0, 100, exclude_max=True, allow_nan=False))
def test_survivor_count_removes_the_rounded_share(total, percent):
    removed_exact = percent * total / 100
    try:
        keep = survivor_count(total, percent)
    except ProjectionError as err:
        assert "removes all" in str(err)
        assert total - round(removed_exact) <= 0
        return
    assert 1 <= keep <= total
    assert abs((total - keep) - removed_exact) <= 0.5 + 1e-9


@pytest.mark.parametrize("percent", [0, 0.0])
@pytest.mark.parametrize("total", [1, 7, 431080])
def test_survivor_count_zero_percent_keeps_all(total, percent):
    assert survivor_count(total, percent) == total


@pytest.mark.parametrize("percent", [-1, -1e-9, 100, 100.0, 150, math.nan, math.inf, "50", None])
def test_survivor_count_outside_range_raises(percent):
    with pytest.raises(ProjectionError, match=r"all_percent must be a number in \[0, 100\)"):
        survivor_count(100, percent)


@pytest.mark.parametrize(("total", "percent"), [(1, 99.0), (100, 99.6), (3, 90.0)])
def test_survivor_count_removing_everything_raises(total, percent):
    with pytest.raises(ProjectionError, match="removes all"):
        survivor_count(total, percent)


def test_survivor_count_without_weights_raises():
    with pytest.raises(ProjectionError, match="N = 0"):
        survivor_count(0, 50.0)


@FAST
@given(st.data())
def test_kth_largest_matches_torch_sort(data):
    scores = data.draw(score_lists())
    total = sum(s.numel() for s in scores)
    k = data.draw(st.integers(1, total))
    dtype = scores[0].dtype
    flat = torch.cat([s.reshape(-1).to(dtype) for s in scores])
    expected = float(torch.sort(flat, descending=True).values[k - 1])
    assert kth_largest(scores, k) == expected


@pytest.mark.parametrize("k", [0, -1, 6])
def test_kth_largest_rejects_k_outside_range(k):
    with pytest.raises(ProjectionError, match="outside"):
        kth_largest([torch.rand(2), torch.rand(3)], k)


# -- scores ---------------------------------------------------------------------------------------


def test_lamp_hand_example():
    (scores,) = lamp_scores([torch.tensor([1.0, 2.0, 3.0])])
    expected = torch.tensor([1 / 14, 4 / 13, 9 / 9])
    torch.testing.assert_close(scores, expected)


def test_lamp_hand_example_with_signs_zeros_and_shape():
    weight = torch.tensor([[-3.0, 1.0], [2.0, 0.0]])
    (scores,) = lamp_scores([weight])
    # squared 9, 1, 4, 0 -> suffix sums over larger-or-equal: 9, 14, 13, 14
    expected = torch.tensor([[1.0, 1 / 14], [4 / 13, 0.0]])
    assert scores.shape == weight.shape
    torch.testing.assert_close(scores, expected)


def test_lamp_scores_every_layer_separately_and_the_largest_scores_one():
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, 4, generator=generator), 100 * torch.randn(7, generator=generator)]
    scores = lamp_scores(weights)
    for w, s in zip(weights, scores, strict=True):
        assert float(s.reshape(-1)[w.abs().argmax()]) == pytest.approx(1.0)
        assert bool(((s > 0) & (s <= 1)).all())
        # monotone in |w| inside a layer
        order = torch.argsort(w.abs().reshape(-1))
        assert bool((s.reshape(-1)[order].diff() >= 0).all())
    # scaling one layer does not change its LAMP scores
    torch.testing.assert_close(lamp_scores([weights[1] / 100])[0], scores[1])


def test_lamp_of_an_all_zero_layer_is_zero_not_nan():
    (scores,) = lamp_scores([torch.zeros(2, 3)])
    assert bool((scores == 0).all())


def test_rms_scores_hand_example():
    (scores,) = rms_scores([torch.tensor([3.0, -4.0])])
    rms = math.sqrt((9 + 16) / 2)
    torch.testing.assert_close(scores, torch.tensor([3 / rms, 4 / rms]))


def test_rms_scores_are_scale_free_per_layer_and_zero_layers_stay_zero():
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(5, 5, generator=generator)
    a, b, z = rms_scores([w, 1000 * w, torch.zeros(3)])
    torch.testing.assert_close(a, b)
    assert float(a.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
    assert bool((z == 0).all())


def test_magnitude_scores_are_absolute_values_and_detached():
    w = torch.tensor([[-2.0, 0.5]], requires_grad=True)
    (scores,) = magnitude_scores([w])
    assert not scores.requires_grad
    assert scores.tolist() == [[2.0, 0.5]]


@pytest.mark.parametrize("name", sorted(SCORE_FUNCTIONS))
def test_compute_scores_dispatches_by_name(name):
    weights = [torch.tensor([1.0, -2.0, 3.0])]
    got = compute_scores(weights, name)
    torch.testing.assert_close(got[0], SCORE_FUNCTIONS[name](weights)[0])


def test_unknown_score_name_raises_and_lists_the_choices():
    with pytest.raises(ProjectionError, match="unknown score 'l1'") as info:
        compute_scores([torch.ones(2)], "l1")
    for name in ("lamp", "magnitude", "rms"):
        assert name in str(info.value)


def test_nan_weights_give_an_error_through_every_score():
    weights = [torch.tensor([1.0, math.nan, 2.0])]
    for name in SCORE_FUNCTIONS:
        with pytest.raises(ProjectionError, match="NaN"):
            global_topk_masks(compute_scores(weights, name), 1)


def test_surplus_ties_are_dropped_from_the_end_across_tensors():
    scores = [torch.tensor([3.0, 1.0, 1.0]), torch.tensor([[1.0, 2.0], [1.0, 0.5]])]
    masks = global_topk_masks(scores, 4)
    assert masks[0].tolist() == [True, True, True]
    assert masks[1].tolist() == [[False, True], [False, False]]
