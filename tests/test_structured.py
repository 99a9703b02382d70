"""Structured Z-step projections (filter, channel, N:M), the pruner and pipeline around them."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import admmprune
from admmprune import ADMMPruner, PrunerError
from admmprune.export.semistructured import (
    NEEDS_CUDA,
    SemiStructuredError,
    check_nm,
    to_semi_structured,
)
from admmprune.projection import (
    STRUCTURES,
    ProjectionError,
    StructureOptions,
    channel_masks,
    compute_scores,
    filter_masks,
    global_topk_masks,
    group_scores,
    nm_masks,
    nm_removed_percent,
    nm_survivors,
    survivor_count,
)
from admmprune.runs.compare import METHODS, admm_epochs, method_config
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline

FAST = settings(max_examples=60, deadline=None)
L2 = StructureOptions(group_score="l2")

# -- strategies ---------------------------------------------------------------------------------


@st.composite
def tensor(draw, dims=(2, 4)):
    """A Linear-like (out, in) or Conv-like (out, in, kh, kw) tensor with few distinct values,
    so that equal group scores (ties) are common."""
    dim = draw(st.sampled_from(dims))
    shape = [draw(st.integers(1, 5)), draw(st.integers(1, 7))]
    if dim == 4:
        shape += [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    numel = math.prod(shape)
    values = draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.0, -2.0]), min_size=numel,
                           max_size=numel))
    return torch.tensor(values).reshape(shape)


@st.composite
def tensors_and_keep(draw):
    values = draw(st.lists(tensor(), min_size=1, max_size=4))
    total = sum(v.numel() for v in values)
    return values, draw(st.integers(0, total))


# -- a reference of the documented group rule ---------------------------------------------------


def groups_of(mask: torch.Tensor, axis: int) -> list[bool]:
    """Each group's state; fails unless every group is all kept or all removed."""
    rows = mask.movedim(axis, 0).reshape(mask.shape[axis], -1)
    out = []
    for row in rows:
        assert bool(row.all()) or not bool(row.any()), "a group is partly kept"
        out.append(bool(row.all()))
    return out


def reference_groups(values, keep, axis, score="l2"):
    """Kept (layer, group) pairs by the rule in group_masks: each layer's best group (first
    on ties), then the ranking (score desc, then layer, then index) until kept >= keep."""
    scores = [s.tolist() for s in group_scores(values, axis, score)]
    sizes = [v.numel() // v.shape[axis] for v in values]
    kept = set()
    for layer, s in enumerate(scores):
        kept.add((layer, max(range(len(s)), key=lambda i, s=s: (s[i], -i))))
    count = sum(sizes[layer] for layer, _ in kept)
    ranked = sorted(((layer, i) for layer, s in enumerate(scores) for i in range(len(s))),
                    key=lambda g: (-scores[g[0]][g[1]], g[0], g[1]))
    for g in ranked:
        if count >= keep:
            break
        if g not in kept:
            kept.add(g)
            count += sizes[g[0]]
    return kept


def kept_groups(masks, axis):
    return {(layer, i) for layer, m in enumerate(masks)
            for i, k in enumerate(groups_of(m, axis)) if k}


# -- filter / channel: the global rule ----------------------------------------------------------


@FAST
@given(tensors_and_keep(), st.sampled_from([0, 1]), st.sampled_from(["l2", "l1", "lamp"]))
def test_group_projection_follows_the_documented_rule(case, axis, score):
    values, keep = case
    project = filter_masks if axis == 0 else channel_masks
    masks = project(values, keep, None, None, StructureOptions(group_score=score))
    for m, v in zip(masks, values, strict=True):
        assert m.shape == v.shape and m.dtype == torch.bool
    assert kept_groups(masks, axis) == reference_groups(values, keep, axis, score)


@FAST
@given(tensors_and_keep(), st.sampled_from([0, 1]))
def test_group_budget_guarantees(case, axis):
    values, keep = case
    masks = (filter_masks if axis == 0 else channel_masks)(values, keep, None, None, L2)
    sizes = [v.numel() // v.shape[axis] for v in values]
    scores = [s.tolist() for s in group_scores(values, axis, "l2")]
    flags = [groups_of(m, axis) for m in masks]
    kept = sum(int(m.sum()) for m in masks)
    best = [max(range(len(s)), key=lambda i, s=s: (s[i], -i)) for s in scores]
    # every layer keeps at least one whole group, its best
    assert all(f[b] for f, b in zip(flags, best, strict=True))
    # never more removed than requested
    assert kept >= keep
    extra = [(layer, i) for layer, f in enumerate(flags) for i, k in enumerate(f)
             if k and i != best[layer]]
    removed = [(layer, i) for layer, f in enumerate(flags) for i, k in enumerate(f) if not k]
    if extra:
        # as close as the ranking allows: without the last group taken, too few survive
        last = max(extra, key=lambda g: (-scores[g[0]][g[1]], g[0], g[1]))
        assert kept - sizes[last[0]] < keep
        assert kept - keep < max(sizes)
        # monotone: no removed group outranks a kept one (layers' best groups aside)
        lowest = min(scores[layer][i] for layer, i in extra)
        assert all(scores[layer][i] <= lowest for layer, i in removed)
    else:
        # the best groups alone reached the budget
        assert kept == sum(sizes)


def test_filter_budget_counts_weights_not_filters():
    # a layer of 2 big filters (size 100) and one of 10 small ones (size 2): all rms 1 except
    # one big filter at 3 and one small filter at 2
    big = torch.ones(2, 100)
    big[1] *= 3.0
    small = torch.ones(10, 2)
    small[4] *= 2.0
    keep = survivor_count(220, 50.0)  # 110
    masks = filter_masks([big, small], keep, None, None, L2)
    # best of each layer (big[1]: 100, small[4]: 2) = 102 < 110; the ranking then takes
    # the ties at score 1 in order: big[0] (100) -> 202 >= 110
    assert groups_of(masks[0], 0) == [True, True]
    assert groups_of(masks[1], 0) == [False] * 4 + [True] + [False] * 5
    # at keep 103 the first tie (big[0]) is still taken: ranking first, not the best fit
    masks = filter_masks([big, small], 103, None, None, L2)
    assert sum(int(m.sum()) for m in masks) == 202


def test_equal_scores_keep_the_first_groups_in_order():
    values = [torch.ones(4, 3), torch.ones(3, 3)]
    masks = filter_masks(values, 12, None, None, L2)
    # best groups: row 0 of each (6 weights); then rows 1, 2 of the first tensor (12)
    assert groups_of(masks[0], 0) == [True, True, True, False]
    assert groups_of(masks[1], 0) == [True, False, False]
    # channels cost 4 and 3: best ones (7), then channels 1 and 2 of the first (15 >= 12)
    masks = channel_masks(values, 12, None, None, L2)
    assert groups_of(masks[0], 1) == [True, True, True]
    assert groups_of(masks[1], 1) == [True, False, False]
    lamp = StructureOptions(group_score="lamp")
    scores = group_scores([torch.ones(3, 2)], 0, "lamp")[0]
    assert scores[0] == 1.0 and scores[0] > scores[1] > scores[2]
    masks = filter_masks([torch.ones(3, 2)], 4, None, None, lamp)
    assert groups_of(masks[0], 0) == [True, True, False]


def test_channel_of_a_conv_is_its_input_channel_and_of_a_linear_its_column():
    conv = torch.ones(3, 4, 2, 2)
    conv[:, 2] *= 5.0
    linear = torch.ones(5, 6)
    linear[:, 1] *= 5.0
    masks = channel_masks([conv, linear], 1, None, None, L2)
    assert masks[0][:, 2].all() and not masks[0][:, [0, 1, 3]].any()
    assert masks[1][:, 1].all() and not masks[1][:, [0, 2, 3, 4, 5]].any()


@FAST
@given(st.lists(tensor(), min_size=1, max_size=4), st.floats(0, 99.9), st.sampled_from([0, 1]))
def test_layerwise_groups_remove_the_same_ratio_everywhere(values, percent, axis):
    masks = (filter_masks if axis == 0 else channel_masks)(values, None, percent, None, L2)
    scores = group_scores(values, axis, "l2")
    for m, v, s in zip(masks, values, scores, strict=True):
        flags = groups_of(m, axis)
        size = v.numel() // v.shape[axis]
        keep = v.numel() - round(percent * v.numel() / 100)
        expected = max(1, math.ceil(keep / size))
        assert sum(flags) == expected
        # the best `expected` groups, first on ties
        order = sorted(range(len(flags)), key=lambda i, s=s: (-float(s[i]), i))
        assert {i for i, k in enumerate(flags) if k} == set(order[:expected])


def test_group_projection_refuses_nan_and_flat_tensors():
    with pytest.raises(ProjectionError, match="NaN"):
        filter_masks([torch.tensor([[float("nan"), 1.0]])], 1, None, None, L2)
    with pytest.raises(ProjectionError, match="at least 2 dimensions"):
        filter_masks([torch.ones(4)], 1, None, None, L2)
    with pytest.raises(ProjectionError, match="unknown group score"):
        filter_masks([torch.ones(2, 2)], 1, None, None, StructureOptions(group_score="l3"))


def test_removed_groups_never_come_back():
    values = [torch.arange(12.0).reshape(4, 3)]
    allowed = [torch.tensor([[True] * 3, [False] * 3, [True] * 3, [False] * 3])]
    # the disallowed rows 1 and 3 score highest by value but are never chosen again
    values[0][1] = 100.0
    masks = filter_masks(values, 6, None, allowed, L2)
    assert groups_of(masks[0], 0) == [True, False, True, False]


# -- N:M ----------------------------------------------------------------------------------------


@FAST
@given(tensor(), st.integers(1, 4), st.integers(2, 5))
def test_nm_keeps_the_n_largest_of_every_group(w, n, m):
    if n >= m:
        n = m - 1
    options = StructureOptions(nm_n=n, nm_m=m)
    mask = nm_masks([w], None, None, None, options)[0]
    assert mask.shape == w.shape
    assert int(mask.sum()) == nm_survivors(w.shape, n, m)
    rows = w.movedim(1, -1).reshape(-1, w.shape[1]).abs().tolist()
    kept = mask.movedim(1, -1).reshape(-1, w.shape[1]).tolist()
    for row, flags in zip(rows, kept, strict=True):
        for start in range(0, len(row), m):
            group = row[start:start + m]
            # the documented rule: largest |w|, the first on ties, min(N, r) in a short group
            ranked = sorted(range(len(group)), key=lambda i, g=group: (-g[i], i))
            expected = {start + i for i in ranked[:min(n, len(group))]}
            assert {start + i for i in range(len(group)) if flags[start + i]} == expected
    assert not check_nm([("w", w * mask)], n, m)


def test_nm_groups_run_along_the_input_channels_of_a_conv():
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])
    w[0, :, 0, 1] = torch.tensor([9.0, 1.0, 1.0, 8.0])
    mask = nm_masks([w], None, None, None, StructureOptions())[0]
    assert mask[0, :, 0, 0].tolist() == [False, True, True, False]
    assert mask[0, :, 0, 1].tolist() == [True, False, False, True]


def test_nm_remainder_and_implied_percent():
    # in = 5 with 2:4: one group of 4 keeps 2, the remainder of 1 keeps 1
    assert nm_survivors((3, 5), 2, 4) == 3 * 3
    assert nm_survivors((6, 1, 5, 5), 2, 4) == 150  # LeNet-like conv1: in = 1, all kept
    assert nm_removed_percent([(8, 8)], 2, 4) == 50.0
    with pytest.raises(ProjectionError, match="1 <= N < M"):
        nm_survivors((4, 4), 4, 4)


def test_check_nm_reports_where_the_pattern_breaks():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    (violation,) = check_nm({"fc": w})
    assert violation.name == "fc" and violation.groups == 1
    assert (violation.row, violation.start, violation.worst) == (0, 4, 3)
    assert check_nm({"fc": w}, n=3, m=4) == []
    with pytest.raises(SemiStructuredError, match="1 <= N < M"):
        check_nm({"fc": w}, n=0)


def test_to_semi_structured_on_cpu_says_it_needs_cuda():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    report = to_semi_structured(model)
    assert report.converted == []
    assert set(report.skipped) == {"0", "2"}
    assert all(reason.startswith(NEEDS_CUDA) for reason in report.skipped.values())
    assert "needs CUDA" in NEEDS_CUDA
    with pytest.raises(SemiStructuredError, match="2:4 only"):
        to_semi_structured(model, 1, 4)


# -- the pruner ---------------------------------------------------------------------------------


def lenet(seed: int = 0):
    torch.manual_seed(seed)
    return admmprune.create_model("lenet5")


def digits(n: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), \
        torch.randint(0, 10, (n,), generator=generator)


def admm_then_retrain(model, pruner, steps=2, k_step=2):
    x, y = digits()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(k_step):
        for _ in range(steps):
            loss = criterion(model(x), y) + pruner.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pruner.admm_step()
    pruner.hard_prune()
    yield "pruned"
    optimizer = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=0.1)
    for _ in range(steps + 1):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.enforce(optimizer)
    yield "retrained"


def layers(model):
    return [(n, m) for n, m in model.named_children() if isinstance(m, admmprune.selection
                                                                       .PRUNABLE_TYPES)]


def assert_filters_removed_with_biases(model, pruner):
    removed_total = 0
    for name, module in layers(model):
        weight, bias = module.weight.detach(), module.bias.detach()
        alive = weight.reshape(weight.shape[0], -1).ne(0).any(1)
        flags = groups_of(pruner.masks[pruner.names.index(f"{name}.weight")], 0)
        assert alive.tolist() == [a and f for a, f in zip(alive.tolist(), flags, strict=True)]
        assert any(flags), name
        removed = ~torch.tensor(flags)
        assert bool((weight[removed] == 0).all()) and bool((bias[removed] == 0).all()), name
        removed_total += int(removed.sum())
    assert removed_total > 0


def test_filter_pruner_zeroes_removed_filters_and_their_biases_on_lenet5():
    model = lenet()
    pruner = ADMMPruner(model, all_percent=90.0, rho=1e-2, structure="filter")
    for _phase in admm_then_retrain(model, pruner):
        assert_filters_removed_with_biases(model, pruner)
        kept = pruner.summary()["kept"]
        assert pruner.keep <= kept < pruner.keep + 800  # fc1 rows are the largest: 800
    # a second stage never revives a removed filter
    before = [m.clone() for m in pruner.masks]
    pruner.start_stage(95.0)
    pruner.admm_step()
    pruner.hard_prune()
    assert all(bool((b | ~a).all()) for a, b in zip(pruner.masks, before, strict=True))
    assert_filters_removed_with_biases(model, pruner)


def test_filter_pruner_state_round_trip_keeps_the_bias_masks():
    model = lenet()
    pruner = ADMMPruner(model, all_percent=80.0, structure="filter", group_score="lamp")
    pruner.hard_prune()
    state = pruner.state_dict()
    assert state["structure"] == "filter"
    other_model = lenet(seed=1)
    other = ADMMPruner(other_model, all_percent=80.0, structure="filter", group_score="lamp")
    other.load_state_dict(state)
    assert_filters_removed_with_biases(other_model, other)
    with pytest.raises(PrunerError, match="structure 'filter'"):
        ADMMPruner(lenet(), all_percent=80.0).load_state_dict(state)


def test_layerwise_filter_pruner_removes_the_same_ratio_per_layer():
    model = lenet()
    pruner = ADMMPruner(model, all_percent=50.0, structure="filter", projection="layerwise")
    pruner.hard_prune()
    *hidden, output = zip(pruner.sparsity(), pruner.params, strict=True)
    for r, p in hidden:
        groups = p.shape[0]
        expected = math.ceil(survivor_count(r.total, 50.0) / (r.total // groups))
        assert r.kept == expected * (r.total // groups), r.name
    assert output[0].kept == output[0].total  # the classes are never removed
    assert_filters_removed_with_biases(model, pruner)


def test_global_filter_pruning_never_removes_an_output_class():
    model = lenet()
    with torch.no_grad():
        model.fc2.weight.mul_(1e-3)  # the smallest filters of all: first to go, were it not
    pruner = ADMMPruner(model, all_percent=90.0, structure="filter")
    pruner.hard_prune()
    assert bool(pruner.masks[-1].all())
    assert pruner.sparsity()[-1].kept == model.fc2.weight.numel()
    assert sum(r.kept for r in pruner.sparsity()) >= pruner.keep


def test_channel_pruner_keeps_whole_input_channels():
    model = lenet()
    pruner = ADMMPruner(model, all_percent=70.0, structure="channel")
    pruner.hard_prune()
    for m, p in zip(pruner.masks, pruner.params, strict=True):
        groups_of(m, 1)
        assert torch.equal(p.detach().ne(0) & ~m, torch.zeros_like(m))
    assert pruner.summary()["kept"] >= pruner.keep


def test_nm_pruner_on_lenet5_holds_the_pattern_through_retraining():
    model = lenet()
    percent = nm_removed_percent([tuple(p.shape) for p in model.parameters() if p.dim() > 1])
    pruner = ADMMPruner(model, all_percent=round(percent, 2), structure="nm")
    for phase in admm_then_retrain(model, pruner):
        assert check_nm(model) == [], phase
        # every group of 4 keeps exactly 2 (conv1's input width 1 keeps its weights)
        assert pruner.summary()["kept"] == pruner.keep == sum(
            nm_survivors(p.shape) for p in pruner.params)


def test_nm_pruner_refuses_a_disagreeing_all_percent():
    with pytest.raises(PrunerError, match=r"set all_percent to 49\.9"):
        ADMMPruner(lenet(), all_percent=90.0, structure="nm")
    with pytest.raises(PrunerError, match="1 <= N < M"):
        ADMMPruner(lenet(), all_percent=50.0, structure="nm", nm_n=4, nm_m=4)
    with pytest.raises(PrunerError, match="layer_percents"):
        ADMMPruner(lenet(), all_percent=50.0, structure="nm", layer_percents=[50.0] * 4)
    with pytest.raises(PrunerError, match="group_score"):
        ADMMPruner(lenet(), all_percent=50.0, structure="filter", score="lamp")
    with pytest.raises(PrunerError, match="structure must be one of"):
        ADMMPruner(lenet(), all_percent=50.0, structure="block")


def test_unstructured_is_unchanged_and_every_structure_is_registered():
    assert set(STRUCTURES) == {"unstructured", "filter", "channel", "nm", "units"}
    model = lenet()
    weights = [p.detach().clone() for _, p in admmprune.selection.prunable_parameters(model)]
    pruner = ADMMPruner(model, all_percent=90.0, score="lamp")
    expected = global_topk_masks(compute_scores(weights, "lamp"), pruner.keep)
    pruner.hard_prune()
    assert all(torch.equal(a, b) for a, b in zip(pruner.masks, expected, strict=True))
    # biases are untouched by unstructured pruning
    assert pruner._biases == []


# -- config, pipeline, compare ------------------------------------------------------------------


def test_config_validates_the_structure_keys():
    config = load_config(None, {"structure": "nm", "all_percent": 50})
    assert (config.structure, config.nm_n, config.nm_m) == ("nm", 2, 4)
    with pytest.raises(ConfigError, match="set all_percent: 50"):
        load_config(None, {"structure": "nm"})  # the default all_percent 98.6
    with pytest.raises(ConfigError, match="set all_percent: 75"):
        load_config(None, {"structure": "nm", "nm_n": 1, "all_percent": [50, 75]})
    with pytest.raises(ConfigError, match="nm_n"):
        load_config(None, {"structure": "nm", "nm_n": 4, "all_percent": 0})
    with pytest.raises(ConfigError, match="structure must be one of"):
        load_config(None, {"structure": "blocks"})
    with pytest.raises(ConfigError, match="group_score must be one of"):
        load_config(None, {"structure": "filter", "group_score": "l3"})
    with pytest.raises(ConfigError, match="leave score at magnitude"):
        load_config(None, {"structure": "filter", "score": "lamp"})
    assert load_config(None, {}).structure == "unstructured"


def test_oneshot_filter_pipeline_respects_the_structure(tmp_path):
    torch.set_num_threads(1)
    config = load_config(None, dict(
        dataset="synthetic", model="lenet5", train_subset=64, test_subset=32, batch_size=32,
        dense_epochs=1, all_percent=80.0, pruning="oneshot", structure="filter",
        retraining_epochs=1, progress=False, threads=1))
    summary = run_pipeline(config, run_dir=tmp_path / "run")
    assert summary["structure"] == "filter"
    model = admmprune.create_model("lenet5")
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt"))
    alive = {name: module.weight.detach().reshape(module.weight.shape[0], -1).ne(0).any(1)
             for name, module in layers(model)}
    for name, module in layers(model):
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        dead = ~alive[name]
        assert bool((weight[dead] == 0).all()) and bool((module.bias[dead] == 0).all())
    assert sum(int((~a).sum()) for a in alive.values()) > 0
    assert summary["kept"] >= survivor_count(summary["total"], 80.0)
    # the pipeline traced the model: columns that read removed fc1 neurons are gone too
    assert not model.fc2.weight.detach()[:, ~alive["fc1"]].any()


def test_compare_has_the_structured_methods():
    base = load_config("recipes/mlp.yaml", {"dataset": "synthetic", "k_step": 2,
                                            "structure": "filter"})
    for method, structure, projection, pruning in [
            ("filter", "filter", "global", "admm"),
            ("filter-layerwise", "filter", "layerwise", "admm"),
            ("filter-oneshot", "filter", "global", "oneshot"),
            ("channel", "channel", "global", "admm"),
            ("admm", "unstructured", "global", "admm")]:
        assert method in METHODS
        config = method_config(base, method, 90.0)
        assert (config.structure, config.projection, config.pruning) == \
            (structure, projection, pruning), method
    oneshot = method_config(base, "filter-oneshot", 90.0)
    assert oneshot.retraining_epochs == base.retraining_epochs + admm_epochs(base)
