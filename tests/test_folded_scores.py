"""Scores that compare across BatchNorm layers (the folded score), layer collapse reports and
the per-layer floor (issue 33)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import REPO
from torch import nn

from admmprune import ADMMPruner
from admmprune.channels.norms import find_norm_neighbours, folded_magnitudes, scale_factors
from admmprune.cli import main
from admmprune.masks import CollapseWarning, collapsed_layers, sparsity_report
from admmprune.models import create_model
from admmprune.projection import ProjectionError, floored_topk_masks
from admmprune.pruner import PrunerError
from admmprune.runs.report import format_layer_shares
from admmprune.selection import prunable_parameters


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics equal to the batch's own (what training converges to)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives its exact statistics
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet_bn", width=4)


def test_pairs_come_from_the_data_flow():
    model = _resnet()
    names = [n for n, _ in prunable_parameters(model)]
    found = {n.name: n for n in find_norm_neighbours(model, names, torch.randn(2, 1, 28, 28))}
    # every convolution of this ResNet feeds a BatchNorm directly, the classifier none
    assert found["stem.0.0.weight"].after is model.stem[0][1]
    assert found["stages.1.shortcut.0.weight"].after is model.stages[1].shortcut[1]
    assert found["stages.2.body.2.0.weight"].after is model.stages[2].body[2][1]
    assert found["fc.weight"].after is None
    # a ReLU or a residual addition sits between each BatchNorm and the next layer
    assert all(n.before is None for n in found.values())


def test_transformer_norms_scale_the_input_columns():
    torch.manual_seed(0)
    llama = create_model("llama", n_layer=1, n_embd=16, n_head=2, n_kv_head=1,
                         intermediate=24, context=8)
    names = [n for n, _ in prunable_parameters(llama)]
    found = {n.name.split(".")[-2]: n for n in find_norm_neighbours(llama, names,
                                                                    torch.randint(256, (1, 8)))}
    block = llama.model.layers[0]
    assert found["q_proj"].before is block.input_layernorm
    assert found["up_proj"].before is block.post_attention_layernorm
    assert found["o_proj"].before is None and found["down_proj"].before is None
    with torch.no_grad():
        block.input_layernorm.weight.copy_(torch.arange(1.0, 17.0))
    factors = scale_factors(llama, [found["q_proj"]])
    # q_proj's weight is [out, in]: column j is multiplied by the norm's weight j
    assert factors[0].shape == (1, 16)
    torch.testing.assert_close(factors[0][0], torch.arange(1.0, 17.0))


def test_gpt2_conv1d_columns_are_its_first_axis():
    gpt = create_model("gpt", n_layer=1, n_embd=16, n_head=2, context=8)
    names = [n for n, _ in prunable_parameters(gpt)]
    entries = find_norm_neighbours(gpt, names, torch.randint(256, (1, 8)))
    c_attn = next(e for e in entries if e.name.endswith("attn.c_attn.weight"))
    assert c_attn.before is gpt.transformer.h[0].ln_1
    factor = scale_factors(gpt, [c_attn])[0]
    assert factor.shape == (16, 1)  # Conv1D stores [in, out]


def test_grouped_convolutions_read_their_own_channels():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, groups=2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    entries = find_norm_neighbours(model, ["1.weight"], torch.randn(1, 4, 5, 5))
    assert entries[0].before is model[0]
    factor = scale_factors(model, entries)[0]
    # rows 0-3 are group 0 (channels 0, 1), rows 4-7 group 1 (channels 2, 3)
    assert factor.shape == (8, 2, 1, 1)
    assert factor[:4, :, 0, 0].tolist() == [[1.0, 2.0]] * 4
    assert factor[4:, :, 0, 0].tolist() == [[3.0, 4.0]] * 4


def test_the_folded_score_ignores_the_scale_batchnorm_removes():
    x = torch.randn(16, 1, 28, 28)
    model = _calibrated(_resnet(), x)
    kwargs = {"all_percent": 90.0, "example_inputs": x[:2]}
    before_folded = ADMMPruner(model, score="folded", **kwargs).preview()
    before_magnitude = ADMMPruner(model, **kwargs).preview()
    # the output is unchanged when a convolution followed by BatchNorm is scaled up
    reference = model(x)
    with torch.no_grad():
        model.stages[1].body[0][0].weight.mul_(50.0)
    _calibrated(model, x)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-4)
    after_folded = ADMMPruner(model, score="folded", **kwargs).preview()
    after_magnitude = ADMMPruner(model, **kwargs).preview()
    assert [r.kept for r in after_folded] == [r.kept for r in before_folded]
    # plain magnitude now gives the scaled layer (nearly) everything
    scaled = "stages.1.body.0.0.weight"
    kept = {r.name: r.kept_fraction for r in after_magnitude}
    assert kept[scaled] > 2 * {r.name: r.kept_fraction for r in before_magnitude}[scaled]


def test_without_norms_folded_is_magnitude():
    torch.manual_seed(0)
    lenet = create_model("lenet5")
    example = torch.randn(2, 1, 28, 28)
    folded = ADMMPruner(lenet, 95.0, score="folded", example_inputs=example)
    magnitude = ADMMPruner(lenet, 95.0)
    assert all(torch.equal(a, b) for a, b in zip(folded.z, magnitude.z, strict=True))
    values = [torch.randn(3, 4)]
    assert torch.equal(folded_magnitudes(values, [None])[0], values[0].abs())


def test_folded_needs_example_inputs_and_single_weights():
    model = _resnet()
    with pytest.raises(PrunerError, match="example_inputs"):
        ADMMPruner(model, 90.0, score="folded")
    with pytest.raises(PrunerError, match="forward pass.*failed"):
        ADMMPruner(model, 90.0, score="folded", example_inputs=torch.randn(2, 3, 5))
    with pytest.raises(PrunerError, match="ranks single weights"):
        ADMMPruner(model, 90.0, score="folded", structure="filter",
                   example_inputs=torch.randn(2, 1, 28, 28))
    with pytest.raises(PrunerError, match="unknown score 'bn'"):
        ADMMPruner(model, 90.0, score="bn")


def test_a_hard_prune_that_empties_a_layer_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # far below every weight of the first layer
    pruner = ADMMPruner(model, 80.0)
    with pytest.warns(CollapseWarning, match=r"2\.weight: keeps no weight"):
        report = pruner.hard_prune()
    assert collapsed_layers(report) == [("2.weight",
                                         "keeps no weight: nothing passes through it")]
    table = format_layer_shares([r.as_dict() for r in report])
    assert "! 2.weight" in table and "0/2" in table and "20.00%" in table  # uniform share
    assert "! collapsing: 2.weight keeps no weight" in table


def test_thin_layers_are_reported_and_healthy_ones_are_not():
    mask = torch.zeros(10, 4, dtype=torch.bool)
    mask[:4] = True  # weights in 4 of 10 output rows
    wide = torch.ones(6, 3, dtype=torch.bool)
    report = sparsity_report(["thin", "wide"], [mask, wide])
    assert (report[0].rows, report[0].open_rows) == (10, 4)
    assert collapsed_layers(report) == [
        ("thin", "keeps weights in 4 of its 10 output rows (16 of 40 weights)")]
    # a weight stored [in, out]: its rows are the second axis
    transposed = sparsity_report(["t"], [mask.t().contiguous()], out_axes=[1])[0]
    assert (transposed.rows, transposed.open_rows) == (10, 4)


def test_no_warning_when_every_layer_keeps_its_paths():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        ADMMPruner(model, 50.0, score="lamp").hard_prune()


def test_the_floor_keeps_each_layers_best_and_the_exact_budget():
    torch.manual_seed(0)
    scores = [torch.rand(100), torch.rand(50) * 1e-3, torch.rand(10)]
    masks = floored_topk_masks(scores, 30, [10, 5, 1])
    assert sum(int(m.sum()) for m in masks) == 30
    assert int(masks[1].sum()) == 5  # only its floor: every other score beats it
    # the floor is the layer's own best
    assert bool(scores[1][masks[1]].min() >= scores[1][~masks[1]].max())
    with pytest.raises(ProjectionError, match="more than the 10"):
        floored_topk_masks(scores, 10, [10, 5, 1])


def test_min_layer_percent_in_the_pruner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    pruner = ADMMPruner(model, 90.0, min_layer_percent=4.0)
    report = pruner.hard_prune()
    assert sum(r.kept for r in report) == pruner.keep
    assert report[1].kept == math.ceil(100 * 4.0 / 100)
    with pytest.raises(PrunerError, match="in \\(0, 100\\)"):
        ADMMPruner(model, 90.0, min_layer_percent=0)
    with pytest.raises(PrunerError, match="floors the global unstructured"):
        ADMMPruner(model, 90.0, min_layer_percent=5.0, projection="layerwise")
    with pytest.raises(PrunerError, match="more than the"):
        ADMMPruner(model, 99.0, min_layer_percent=50.0)


def test_inspect_previews_the_shares_a_hard_prune_would_give(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["inspect", "mobilenet_bn", "--all-percent", "95", "--dataset", "synthetic",
                 "--score", "folded"]) == 0
    out = capsys.readouterr().out
    assert "a hard prune of the initial weights at all_percent 95" in out
    assert "score folded" in out and "uniform %" in out and "open rows" in out
    # the recipe's missing pretrained file leaves the listing and skips the preview
    assert main(["inspect", "recipes/alexnet_imagenet.yaml"]) == 0
    assert "no preview of the per-layer shares" in capsys.readouterr().out


def test_whole_filters_removed_are_not_a_collapse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        report = ADMMPruner(model, 70.0, structure="filter").hard_prune()
    assert report[0].open_rows < report[0].rows / 2  # rows emptied by design, no warning
