"""The obd score: Optimal Brain Damage saliency, w² times the diagonal of the output
Gauss-Newton matrix estimated from a batch's output gradients (issue 33)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune import ADMMPruner
from admmprune.channels.curvature import CurvatureError, obd_saliency, output_curvature
from admmprune.projection import survivor_count
from admmprune.pruner import PrunerError
from admmprune.runs.compare import METHODS


def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 5))
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics that are not the identity
            model(torch.randn(32, 3, 8, 8))
    return model.eval()


def test_one_example_through_a_linear_layer_gives_the_exact_curvature():
    # y = W x: removing w_ij moves y_i by w_ij·x_j, whatever the probe's signs (r² = 1)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    curvature, = output_curvature(model, ["0.weight"], x, probes=3)
    torch.testing.assert_close(curvature, x.square().expand(3, 4))
    saliency, = obd_saliency([model[0].weight], [curvature])
    torch.testing.assert_close(saliency, model[0].weight.detach().square() * x.square())


def test_the_probe_estimate_matches_per_example_jacobians():
    model, x = _conv_bn(), torch.randn(8, 3, 8, 8)
    names, params = ["0.weight", "4.weight"], [model[0].weight, model[4].weight]
    exact = [torch.zeros_like(p) for p in params]
    for b in range(len(x)):
        for k in range(5):
            for total, grad in zip(exact, torch.autograd.grad(model(x[b:b + 1])[0, k], params),
                                   strict=True):
                total += grad.square()
    estimate = output_curvature(model, names, x, probes=256)
    for got, want in zip(estimate, exact, strict=True):
        assert abs(float(got.sum() / want.sum()) - 1.0) < 0.1
        pair = torch.stack([got.flatten(), want.flatten()])
        assert float(torch.corrcoef(pair)[0, 1]) > 0.85


def test_batchnorm_scale_does_not_move_the_obd_ranking():
    model, x = _conv_bn(), torch.randn(16, 3, 8, 8)
    before = ADMMPruner(model, 90.0, score="obd", example_inputs=x)
    magnitude_before = ADMMPruner(model, 90.0, example_inputs=x)
    reference = model(x)
    with torch.no_grad():  # the convolution x50, its BatchNorm's statistics to match
        model[0].weight.mul_(50.0)
        model[0].bias.mul_(50.0)
        model[1].running_mean.mul_(50.0)
        model[1].running_var.mul_(2500.0)
    torch.testing.assert_close(model(x), reference, rtol=1e-3, atol=1e-4)
    after = ADMMPruner(model, 90.0, score="obd", example_inputs=x)
    magnitude_after = ADMMPruner(model, 90.0, example_inputs=x)

    def kept(pruner: ADMMPruner) -> list[int]:
        return [int(z.count_nonzero()) for z in pruner.z]

    assert kept(before) == kept(after)
    assert kept(magnitude_before) != kept(magnitude_after)  # magnitude moves the budget


def test_the_estimate_is_repeatable_and_leaves_the_model_as_it_was():
    model, x = _conv_bn(), torch.randn(4, 3, 8, 8)
    model.train()
    model[4].weight.requires_grad_(False)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    stats = model[1].running_var.clone()
    rng = torch.get_rng_state()
    first = output_curvature(model, ["0.weight", "4.weight"], x)
    second = output_curvature(model, ["0.weight", "4.weight"], x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert model.training and not model[4].weight.requires_grad
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert model[4].weight.grad is None
    assert torch.equal(model[1].running_var, stats)
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_z_step_keeps_the_budget():
    model, x = _conv_bn(), torch.randn(16, 3, 8, 8)
    pruner = ADMMPruner(model, 80.0, score="obd", example_inputs=x)
    total = sum(p.numel() for p in pruner.params)
    pruner.admm_step()
    assert sum(int(z.count_nonzero()) for z in pruner.z) == survivor_count(total, 80.0)


def test_the_hard_prune_keeps_the_most_salient_weights():
    model, x = _conv_bn(), torch.randn(16, 3, 8, 8)
    names = ["0.weight", "4.weight"]
    saliency = obd_saliency([model.get_parameter(n) for n in names],
                            output_curvature(model, names, x))
    ADMMPruner(model, 80.0, score="obd", example_inputs=x).hard_prune()
    weights = [model.get_parameter(n).detach() for n in names]
    total = sum(w.numel() for w in weights)
    assert sum(int(w.count_nonzero()) for w in weights) == survivor_count(total, 80.0)
    kept = torch.cat([s[w != 0] for s, w in zip(saliency, weights, strict=True)])
    removed = torch.cat([s[w == 0] for s, w in zip(saliency, weights, strict=True)])
    assert float(removed.max()) <= float(kept.min())
    # it does not rank by magnitude: the two layers keep other shares than magnitude's
    magnitude = ADMMPruner(_conv_bn(), 80.0).preview()
    assert [r.kept for r in magnitude] != [int(w.count_nonzero()) for w in weights]


def test_obd_refuses_what_it_cannot_measure():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(PrunerError, match="example_inputs"):
        ADMMPruner(model, 50.0, score="obd")
    with pytest.raises(PrunerError, match="forward pass failed"):
        ADMMPruner(model, 50.0, score="obd", example_inputs=torch.randn(2, 7))

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).argmax(1)  # integers: no gradient to differentiate

    with pytest.raises(PrunerError, match="use another score"):
        ADMMPruner(Detached(), 50.0, score="obd", example_inputs=torch.randn(2, 4))

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(PrunerError, match="spare.weight: the model's outputs do not depend"):
        ADMMPruner(Unused(), 50.0, score="obd", example_inputs=torch.randn(2, 4))
    with pytest.raises(CurvatureError, match="probes"):
        output_curvature(model, ["0.weight"], torch.randn(2, 4), probes=0)


def test_compare_has_obd_under_admm_and_one_shot():
    assert METHODS["obd"][1]["score"] == "obd"
    assert METHODS["obd-oneshot"][1] == {"pruning": "oneshot", "projection": "global",
                                         "score": "obd"}
