"""Wanda: scores against a direct computation, exact per-row counts, 2:4, installation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune import ADMMPruner
from admmprune.posttraining.activations import input_feature_dim, input_norms
from admmprune.posttraining.wanda import (
    WandaError,
    nm_row_masks,
    row_masks,
    wanda_masks,
    wanda_scores,
)
from admmprune.pruner import PrunerError

INCLUDE = ["*.c_attn", "*.c_proj", "*.c_fc"]


def calibration(n=3, shape=(5, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *shape, generator=g), None) for _ in range(n)]


def direct_scores(weight_out_in: torch.Tensor, batches) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ with the inputs of every token stacked: the paper's formula."""
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b, _ in batches])
    return weight_out_in.abs() * x.norm(dim=0).unsqueeze(0)


def test_linear_scores_equal_the_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    batches = calibration()
    (norms,) = input_norms(model, [model[0]], batches)
    scores = wanda_scores(model[0].weight, norms, input_feature_dim(model[0]))
    assert torch.allclose(scores, direct_scores(model[0].weight.detach(), batches), rtol=1e-5)


def test_conv1d_scores_use_its_input_axis_zero():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(6, 8)  # nf=6 outputs, nx=8 inputs: weight [8, 6]
    model = nn.Sequential(layer)
    assert input_feature_dim(layer) == 0 and layer.weight.shape == (8, 6)
    batches = calibration()
    (norms,) = input_norms(model, [layer], batches)
    scores = wanda_scores(layer.weight, norms, 0)
    assert torch.allclose(scores.t(), direct_scores(layer.weight.detach().t(), batches),
                          rtol=1e-5)
    mask = row_masks(scores, 50.0, input_dim=0)
    assert mask.sum(0).tolist() == [4] * 6  # per output (a column here): 4 of 8 inputs kept
    expected = scores.t().topk(4, dim=1).indices.sort(1).values
    assert torch.equal(mask.t().nonzero()[:, 1].view(6, 4), expected)


@pytest.mark.parametrize("percent,kept", [(50.0, 5), (70.0, 3), (90.0, 1), (0.0, 10)])
def test_every_row_keeps_exactly_its_share(percent, kept):
    scores = torch.rand(7, 10, generator=torch.Generator().manual_seed(1))
    mask = row_masks(scores, percent)
    assert mask.sum(1).tolist() == [kept] * 7
    # the kept entries are each row's largest
    kept_min = torch.where(mask, scores, torch.inf).min(1).values
    dropped_max = torch.where(mask, -torch.inf, scores).max(1).values
    assert bool((kept_min > dropped_max).all())


def test_two_of_four_along_the_inputs_in_both_layouts():
    scores = torch.rand(6, 12, generator=torch.Generator().manual_seed(2))
    mask = nm_row_masks(scores, 2, 4)
    groups = mask.view(6, 3, 4)
    assert bool((groups.sum(-1) == 2).all())
    top = scores.view(6, 3, 4).topk(2, dim=-1).indices
    assert bool(groups.gather(-1, top).all())
    assert torch.equal(nm_row_masks(scores.t().contiguous(), 2, 4, input_dim=0), mask.t())


def test_gpt_masks_in_selection_order_install_through_the_pruner():
    from admmprune.models import create_model

    torch.manual_seed(0)
    model = create_model("gpt", n_layer=2, n_embd=32, n_head=2, context=16)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randint(256, (4, 16), generator=g), None) for _ in range(2)]
    masks = wanda_masks(model, batches, all_percent=75.0, include=INCLUDE)
    pruner = ADMMPruner(model, all_percent=75.0, include=INCLUDE)
    assert [tuple(m.shape) for m in masks] == [tuple(p.shape) for p in pruner.params]
    for name, m in zip(pruner.names, masks, strict=True):
        inputs = m.shape[0]  # Conv1D: [in, out]
        assert m.sum(0).tolist() == [inputs // 4] * m.shape[1], name
    report = pruner.apply_masks(masks)
    assert sum(r.kept for r in report) == sum(int(m.sum()) for m in masks)
    for p, m in zip(pruner.params, masks, strict=True):
        assert bool((p[~m] == 0).all()) and bool((p[m] != 0).all())
    nm = wanda_masks(model, batches, nm=(2, 4), include=INCLUDE, max_batches=1)
    assert all(bool((m.t().reshape(m.shape[1], -1, 4).sum(-1) == 2).all()) for m in nm)
    with pytest.raises(PrunerError, match="1 masks"):
        pruner.apply_masks(masks[:1])


def test_bad_requests_are_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(WandaError, match="exactly one"):
        wanda_masks(model, [], include=["2"])
    with pytest.raises(WandaError, match="exclude it"):
        wanda_masks(model, [(torch.randn(1, 1, 4, 4), None)], all_percent=50.0)
    with pytest.raises(WandaError, match="input norms"):
        wanda_scores(torch.ones(2, 3), torch.ones(2))


def test_row_masks_for_count_keep_exactly_the_budget_as_evenly_as_rows_allow():
    from admmprune.posttraining.wanda import WandaError, row_masks_for_count

    torch.manual_seed(0)
    scores = torch.rand(5, 8)
    for keep in (0, 3, 5, 17, 40):
        mask = row_masks_for_count(scores, keep)
        per_row = mask.sum(1)
        assert int(per_row.sum()) == keep and int(per_row.max() - per_row.min()) <= 1
        # every row keeps its largest scores
        for row, kept in zip(scores, mask, strict=True):
            if 0 < int(kept.sum()) < 8:
                assert row[kept].min() >= row[~kept].max()
    # 17 = 3 per row + 2 rows with one more: the rows whose 4th largest score is highest
    fourth = scores.sort(dim=1, descending=True).values[:, 3]
    assert set(torch.nonzero(row_masks_for_count(scores, 17).sum(1) == 4).flatten().tolist()) \
        == set(fourth.argsort(descending=True)[:2].tolist())
    with pytest.raises(WandaError):
        row_masks_for_count(scores, 41)
