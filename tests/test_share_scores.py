"""The share score: each weight's share of its own output, |w_ij|·rms(x_j)/rms(y_i), which no
rescaling of a layer's rows, columns or inputs changes (issue 33)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune import ADMMPruner
from admmprune.channels.shares import activation_rms, share_factors, share_magnitudes
from admmprune.models import create_model
from admmprune.projection import survivor_count
from admmprune.pruner import PrunerError
from admmprune.runs.compare import METHODS


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(),
                         nn.Linear(5, 3)).eval()


def test_the_score_is_the_weights_share_of_its_output_by_hand():
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0, -2.0], [3.0, 0.0, 2.0]])
    (inputs, outputs), = activation_rms(model, ["0.weight"], x)
    y = model(x)
    torch.testing.assert_close(inputs.float(), x.pow(2).mean(0).sqrt())
    torch.testing.assert_close(outputs.float(), y.pow(2).mean(0).sqrt())
    score = share_magnitudes([model[0].weight], share_factors(model, ["0.weight"], x))[0]
    expected = model[0].weight.abs() * x.pow(2).mean(0).sqrt()[None, :] \
        / y.pow(2).mean(0).sqrt()[:, None]
    torch.testing.assert_close(score, expected)


def test_rescaling_a_hidden_unit_changes_magnitude_ranks_but_not_shares():
    model, x = _mlp(), torch.randn(64, 6)
    kwargs = {"all_percent": 80.0, "example_inputs": x}
    share_before = ADMMPruner(model, score="share", **kwargs)
    magnitude_before = ADMMPruner(model, **kwargs)
    reference = model(x)
    with torch.no_grad():  # unit 2 of the first layer x100, the columns reading it /100
        model[0].weight[2].mul_(100.0)
        model[0].bias[2].mul_(100.0)
        model[2].weight[:, 2].div_(100.0)
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    share_after = ADMMPruner(model, score="share", **kwargs)
    magnitude_after = ADMMPruner(model, **kwargs)
    def same(a: ADMMPruner, b: ADMMPruner) -> bool:  # the same weights kept
        return all(torch.equal(x != 0, y != 0) for x, y in zip(a.z, b.z, strict=True))

    assert same(share_before, share_after)
    assert not same(magnitude_before, magnitude_after)


def test_batchnorm_scale_does_not_move_the_share_ranking():
    torch.manual_seed(0)
    model = create_model("resnet_bn", width=4).eval()
    x = torch.randn(8, 1, 28, 28)
    before = ADMMPruner(model, 90.0, score="share", example_inputs=x).preview()
    with torch.no_grad():  # a convolution x50, its BatchNorm's statistics x50 too
        conv, norm = model.stages[1].body[0]
        conv.weight.mul_(50.0)
        norm.running_mean.mul_(50.0)
        norm.running_var.mul_(2500.0)
    after = ADMMPruner(model, 90.0, score="share", example_inputs=x).preview()
    assert [r.kept for r in after] == [r.kept for r in before]


def test_grouped_and_depthwise_convolutions_read_their_own_channels():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, bias=False)).eval()
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    x = torch.randn(16, 4, 6, 6) * scale
    factor = share_factors(model, ["0.weight"], x)[0]
    assert factor.shape == (8, 2, 1, 1)
    (inputs, outputs), = activation_rms(model, ["0.weight"], x)
    # rows 0-3 read channels 0, 1; rows 4-7 channels 2, 3
    torch.testing.assert_close(factor[:4, :, 0, 0] * outputs[:4, None].float(),
                               inputs[None, :2].float().expand(4, 2))
    torch.testing.assert_close(factor[4:, :, 0, 0] * outputs[4:, None].float(),
                               inputs[None, 2:].float().expand(4, 2))


def test_the_hard_prune_keeps_the_budget_by_share():
    model, x = _mlp(), torch.randn(32, 6)
    names = ["0.weight", "2.weight", "4.weight"]
    expected = share_magnitudes([model.get_parameter(n) for n in names],
                                share_factors(model, names, x))
    pruner = ADMMPruner(model, 75.0, score="share", example_inputs=x)
    pruner.hard_prune()
    assert pruner.masks is not None
    total = sum(p.numel() for p in pruner.params)
    assert sum(int(m.sum()) for m in pruner.masks) == survivor_count(total, 75.0)
    # every kept weight's share is at least every removed one's
    kept = torch.cat([s[m.bool()] for s, m in zip(expected, pruner.masks, strict=True)])
    removed = torch.cat([s[~m.bool()] for s, m in zip(expected, pruner.masks, strict=True)])
    assert float(kept.min()) >= float(removed.max()) - 1e-6


def test_share_refuses_what_it_cannot_measure():
    model = _mlp()
    with pytest.raises(PrunerError, match="example_inputs"):
        ADMMPruner(model, 90.0, score="share")
    with pytest.raises(PrunerError, match="forward pass.*failed"):
        ADMMPruner(model, 90.0, score="share", example_inputs=torch.randn(2, 7))
    transposed = nn.Sequential(nn.ConvTranspose2d(2, 3, 3))
    with pytest.raises(PrunerError, match="transposed"):
        ADMMPruner(transposed, 90.0, score="share", example_inputs=torch.randn(1, 2, 4, 4))
    unused = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    unused.forward = lambda x: unused["a"](x)  # type: ignore[method-assign]
    with pytest.raises(PrunerError, match="never ran"):
        ADMMPruner(unused, 50.0, score="share", example_inputs=torch.randn(3, 2))


def test_compare_offers_share_under_admm_and_one_shot():
    assert METHODS["share"][1] == {"projection": "global", "score": "share"}
    assert METHODS["share-oneshot"][1]["pruning"] == "oneshot"
