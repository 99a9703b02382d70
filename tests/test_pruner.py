"""ADMMPruner on small models: selection, the ADMM loop, hard pruning, retraining, stages, state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import admmprune
from admmprune import ADMMPruner, PrunerError
from admmprune import admm as admm_module
from admmprune import pruner as pruner_module
from admmprune.masks import MaskEnforcer
from admmprune.projection import survivor_count
from admmprune.selection import SelectionError

# -- helpers ------------------------------------------------------------------------------------


def blobs(n: int = 256, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two gaussian blobs centred at -1 and +1 in every coordinate."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, dim, generator=generator) + (2 * y - 1).unsqueeze(1).float()
    return x, y


def small_mlp(seed: int = 0, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return admmprune.create_model("mlp", depth=2, width=width, input_size=8, num_classes=2)


def nonzeros(pruner: ADMMPruner) -> int:
    return sum(int(p.detach().count_nonzero()) for p in pruner.params)


def train(model, pruner, optimizer, x, y, steps, *, enforce=False, after_step=None):
    criterion = nn.CrossEntropyLoss()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(x), y) + pruner.penalty()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if enforce:
            pruner.enforce()
    with torch.no_grad():
        return float(criterion(model(x), y))


@torch.no_grad()
def perturb(pruner: ADMMPruner, seed: int, scale: float = 0.05) -> None:
    """A deterministic stand-in for a W-step (which cannot move weights a mask removed)."""
    generator = torch.Generator().manual_seed(seed)
    masks = pruner.masks or [None] * len(pruner.params)
    for p, m in zip(pruner.params, masks, strict=True):
        noise = scale * torch.randn(p.shape, generator=generator)
        p.add_(noise if m is None or pruner.allow_regrowth else noise * m)


def oracle_global_masks(values: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Largest |value| across all tensors, ties to the first in (tensor, row-major) order."""
    flat = [abs(v) for t in values for v in t.reshape(-1).tolist()]
    ranked = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[ranked[:keep]] = True
    masks, start = [], 0
    for t in values:
        masks.append(chosen[start:start + t.numel()].reshape(t.shape))
        start += t.numel()
    return masks


# -- which tensors are pruned -----------------------------------------------------------------


def test_only_conv_and_linear_weights_are_prunable():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv1d(2, 2, 1, bias=False),  # not in the forward path; selection is structural
        nn.Flatten(),
        nn.Linear(16, 5),
        nn.LayerNorm(5),
    )
    pruner = ADMMPruner(model, all_percent=50.0)
    assert pruner.names == ["0.weight", "3.weight", "5.weight"]
    assert pruner.params[0] is model[0].weight
    assert pruner.params[1] is model[3].weight
    assert pruner.params[2] is model[5].weight
    assert pruner.total == 4 * 3 * 3 * 3 + 2 * 2 + 16 * 5
    ids = {id(p) for p in pruner.params}
    for excluded in (model[0].bias, model[1].weight, model[1].bias, model[5].bias,
                     model[6].weight):
        assert id(excluded) not in ids


def test_lenet5_prunable_tensors():
    pruner = ADMMPruner(admmprune.create_model("lenet5"), all_percent=90.0)
    assert pruner.names == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert pruner.total == 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["fc*"], None, ["fc1.weight", "fc2.weight"]),
        (None, ["conv1"], ["conv2.weight", "fc1.weight", "fc2.weight"]),
        (["conv*"], ["conv2"], ["conv1.weight"]),
        (["conv1", "fc2"], None, ["conv1.weight", "fc2.weight"]),
        (None, ["*2"], ["conv1.weight", "fc1.weight"]),
    ],
)
def test_include_and_exclude_patterns(include, exclude, expected):
    model = admmprune.create_model("lenet5")
    pruner = ADMMPruner(model, all_percent=50.0, include=include, exclude=exclude)
    assert pruner.names == expected
    assert pruner.total == sum(dict(model.named_parameters())[n].numel() for n in expected)


@pytest.mark.parametrize(
    ("include", "exclude"), [(["nothing*"], None), (None, ["fc3"]), (["fc1", "fc9"], None)]
)
def test_pattern_matching_nothing_raises_a_clear_error(include, exclude):
    with pytest.raises(SelectionError) as info:
        ADMMPruner(admmprune.create_model("lenet5"), 50.0, include=include, exclude=exclude)
    message = str(info.value)
    bad = (include or exclude)[-1]
    assert repr(bad) in message or repr(include) in message  # names the culprit
    assert "conv1" in message and "fc2" in message  # and lists what exists


def test_patterns_leaving_nothing_raise_a_clear_error():
    with pytest.raises(SelectionError, match="no prunable tensor") as info:
        ADMMPruner(admmprune.create_model("lenet5"), 50.0, include=["fc*"], exclude=["fc*"])
    assert "conv1" in str(info.value)


def test_model_without_conv_or_linear_raises():
    with pytest.raises(SelectionError, match="no prunable tensor"):
        ADMMPruner(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 50.0)


# -- settings that are refused ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"all_percent": -1}, "all_percent"),
        ({"all_percent": 100}, "all_percent"),
        ({"all_percent": 150}, "all_percent"),
        ({"all_percent": 99.99}, "removes all"),
        ({"rho": 0}, "rho must be a positive number"),
        ({"rho": -1e-3}, "rho must be a positive number"),
        ({"rho": float("nan")}, "rho must be a positive number"),
        ({"rho_growth": 0.5}, "rho_growth must be >= 1"),
        ({"rho_growth": float("nan")}, "rho_growth must be >= 1"),
        ({"rho_growth": float("inf")}, "rho_growth must be >= 1 and finite"),
        ({"rho": float("inf")}, "rho must be a positive number"),
        ({"rho": 1.0, "rho_max": 0.1}, "rho_max"),
        ({"rho_max": float("nan")}, "rho_max"),
        ({"p_lambda": -1.0}, "p_lambda"),
        ({"p_lambda": float("nan")}, "p_lambda"),
        ({"p_lambda": float("inf")}, "p_lambda"),
        ({"projection": "per-channel"}, "projection must be one of"),
        ({"z_init": "zeros"}, "z_init"),
        ({"score": "taylor"}, "unknown score 'taylor'"),
        ({"projection": "layerwise", "layer_percents": [50.0, 50.0]}, "layer_percents has 2"),
        ({"projection": "layerwise", "layer_percents": [50.0] * 4}, "layer_percents has 4"),
        ({"projection": "layerwise", "layer_percents": [50.0, 100.0, 10.0]}, "all_percent"),
    ],
)
def test_bad_settings_raise_pruner_error(kwargs, message):
    settings = {"all_percent": 50.0, **kwargs}
    with pytest.raises(PrunerError, match=message):
        ADMMPruner(small_mlp(), **settings)


def test_calls_in_the_wrong_order_raise_pruner_error():
    pruner = ADMMPruner(small_mlp(), all_percent=50.0)
    with pytest.raises(PrunerError, match="before hard_prune"):
        pruner.enforce()
    with pytest.raises(PrunerError, match="support must be one of"):
        pruner.hard_prune(support="masks")
    pruner.hard_prune()
    with pytest.raises(PrunerError, match="after hard_prune"):
        pruner.admm_step()


# -- the ADMM step ------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["magnitude", "rms", "lamp"])
def test_admm_step_leaves_exactly_k_nonzeros_in_z(score):
    model = admmprune.create_model("lenet5")
    pruner = ADMMPruner(model, all_percent=99.0, score=score)
    keep = survivor_count(430500, 99.0)
    assert pruner.keep == keep == 4305
    assert sum(int(z.count_nonzero()) for z in pruner.z) == keep  # Z = Π(W) at the start
    perturb(pruner, seed=1)
    pruner.admm_step()
    assert sum(int(z.count_nonzero()) for z in pruner.z) == keep
    for z, p in zip(pruner.z, pruner.params, strict=True):
        assert z.shape == p.shape


def test_admm_step_follows_the_scaled_form_updates():
    model = small_mlp(seed=3)
    pruner = ADMMPruner(model, all_percent=80.0, rho=0.1, rho_growth=1.5)
    perturb(pruner, seed=4)
    pruner.admm_step()  # makes U non-zero
    perturb(pruner, seed=5)
    weights = [p.detach().clone() for p in pruner.params]
    u_old = [u.clone() for u in pruner.u]
    z_old = [z.clone() for z in pruner.z]
    rho_old = pruner.rho
    record = pruner.admm_step()

    target = [w + u for w, u in zip(weights, u_old, strict=True)]
    expected_masks = oracle_global_masks(target, pruner.keep)
    for z, t, m in zip(pruner.z, target, expected_masks, strict=True):
        assert torch.equal(z, t * m)  # Z = Π(W + U)
    for u_new, u, w, z in zip(pruner.u, u_old, weights, pruner.z, strict=True):
        # U = (U + W - Z), then rescaled so that rho·U is unchanged
        torch.testing.assert_close(pruner.rho * u_new, rho_old * (u + w - z))
    assert pruner.rho == pytest.approx(rho_old * 1.5)
    assert record["rho"] == rho_old and record["next_rho"] == pruner.rho
    assert record["iteration"] == pruner.iteration == 2
    primal = sum(float((w - z).pow(2).sum()) for w, z in zip(weights, pruner.z, strict=True))
    dual = sum(float((z - zp).pow(2).sum()) for z, zp in zip(pruner.z, z_old, strict=True))
    assert record["primal_residual"] == pytest.approx(primal ** 0.5)
    assert record["dual_residual"] == pytest.approx(rho_old * dual ** 0.5)
    assert pruner.history[-1] == record


def test_penalty_gradient_through_the_pruner():
    model = small_mlp(seed=6)
    pruner = ADMMPruner(model, all_percent=70.0, rho=0.3, p_lambda=0.01)
    perturb(pruner, seed=7)
    pruner.admm_step()
    grads = torch.autograd.grad(pruner.penalty(), pruner.params)
    for g, w, z, u in zip(grads, pruner.params, pruner.z, pruner.u, strict=True):
        torch.testing.assert_close(g, pruner.rho * (w.detach() - z + u) + 0.01 * w.detach())


def test_rho_growth_caps_at_rho_max():
    pruner = ADMMPruner(small_mlp(), all_percent=50.0, rho=0.01, rho_growth=3.0, rho_max=0.2)
    seen = []
    for _ in range(5):
        seen.append(pruner.admm_step()["rho"])
    assert seen == pytest.approx([0.01, 0.03, 0.09, 0.2, 0.2])


def test_adaptive_rho_raises_rho_while_the_primal_residual_dominates():
    pruner = ADMMPruner(small_mlp(), all_percent=90.0, rho=0.01, adaptive_rho=True,
                        rho_growth=5.0)  # rho_growth is unused with adaptive_rho
    perturb(pruner, seed=1, scale=1.0)  # dense weights, far from the sparse set
    record = pruner.admm_step()
    assert record["primal_residual"] > 10 * record["dual_residual"]
    assert pruner.rho == pytest.approx(0.02)


def test_adaptive_rho_lowers_rho_while_the_dual_residual_dominates():
    pruner = ADMMPruner(small_mlp(), all_percent=90.0, rho=100.0, adaptive_rho=True)
    with torch.no_grad():  # weights already exactly K-sparse, but on another support than Z
        for p, z in zip(pruner.params, pruner.z, strict=True):
            p.copy_(z.flip(0))
    z_before = [z.clone() for z in pruner.z]
    record = pruner.admm_step()
    assert record["primal_residual"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(z_before, pruner.z, strict=True))
    assert record["dual_residual"] > 0
    assert pruner.rho == pytest.approx(50.0)


# -- the whole method on generated data -------------------------------------------------------


def admm_phase(model, pruner, x, y, iterations=6, steps=30):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    records = []
    for _ in range(iterations):
        train(model, pruner, optimizer, x, y, steps)
        records.append(pruner.admm_step())
    return records


def test_admm_training_hard_prune_and_masked_retraining_with_adam():
    x, y = blobs()
    model = small_mlp(seed=0)
    pruner = ADMMPruner(model, all_percent=90.0, rho=1e-2, rho_growth=2.0)
    keep = survivor_count(8 * 32 + 32 * 32 + 32 * 2, 90.0)
    assert pruner.keep == keep == 134

    records = admm_phase(model, pruner, x, y)
    primal = [r["primal_residual"] for r in records]
    rhos = [r["rho"] for r in records]
    assert rhos == pytest.approx([0.01 * 2**k for k in range(6)])
    assert primal[-1] < 0.25 * primal[0]
    assert all(b < a for a, b in zip(primal, primal[1:], strict=False))

    biases = [model.hidden[0].bias.detach().clone(), model.classifier.bias.detach().clone()]
    report = pruner.hard_prune()
    assert sum(r.kept for r in report) == keep
    assert nonzeros(pruner) == keep
    assert sum(int(m.sum()) for m in pruner.masks) == keep
    assert pruner.summary()["kept"] == keep
    # biases are untouched by the hard prune
    assert torch.equal(model.hidden[0].bias, biases[0])
    assert torch.equal(model.classifier.bias, biases[1])
    criterion = nn.CrossEntropyLoss()
    with torch.no_grad():
        loss_after_prune = float(criterion(model(x), y))

    before = [p.detach().clone() for p in pruner.params]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # a fresh optimizer
    pruned = [~m for m in pruner.masks]

    def check_before_enforce():
        # the gradient hooks alone keep pruned weights and Adam's moments at exactly zero
        for p, off in zip(pruner.params, pruned, strict=True):
            assert bool((p.detach()[off] == 0).all())
            state = optimizer.state[p]
            assert bool((state["exp_avg"][off] == 0).all())
            assert bool((state["exp_avg_sq"][off] == 0).all())

    loss_after_retraining = train(model, pruner, optimizer, x, y, 30, enforce=True,
                                  after_step=check_before_enforce)
    check_before_enforce()
    assert nonzeros(pruner) == keep
    changed = sum(int((p.detach() != b)[m].sum()) for p, b, m in
                  zip(pruner.params, before, pruner.masks, strict=True))
    assert changed > 0.5 * keep  # the survivors do train (those feeding dead units cannot)
    assert loss_after_retraining < loss_after_prune


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
    ],
    ids=["adamw", "sgd-momentum", "adam-l2"],
)
def test_masked_retraining_keeps_pruned_entries_zero_for_other_optimizers(make_optimizer):
    x, y = blobs(seed=1)
    model = small_mlp(seed=1)
    pruner = ADMMPruner(model, all_percent=75.0, rho=0.05, p_lambda=1e-3)
    admm_phase(model, pruner, x, y, iterations=2, steps=10)
    pruner.hard_prune()
    keep = pruner.keep
    before = [p.detach().clone() for p in pruner.params]
    optimizer = make_optimizer(model.parameters())

    def check():
        for p, m in zip(pruner.params, pruner.masks, strict=True):
            assert bool((p.detach()[~m] == 0).all())
            for buffer in optimizer.state[p].values():
                if isinstance(buffer, torch.Tensor) and buffer.shape == p.shape:
                    assert bool((buffer[~m] == 0).all())

    train(model, pruner, optimizer, x, y, 15, enforce=True, after_step=check)
    assert nonzeros(pruner) == keep
    assert any(not torch.equal(p.detach(), b) for p, b in zip(pruner.params, before, strict=True))


def test_enforce_with_optimizer_rezeroes_weights_and_buffers_written_from_outside():
    x, y = blobs()
    model = small_mlp(seed=2)
    pruner = ADMMPruner(model, all_percent=60.0)
    pruner.hard_prune()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, pruner, optimizer, x, y, 2)
    with torch.no_grad():
        for p in pruner.params:
            p.add_(1.0)
            optimizer.state[p]["exp_avg"].add_(1.0)
    pruner.enforce(optimizer)
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert bool((p.detach()[~m] == 0).all())
        assert bool((optimizer.state[p]["exp_avg"][~m] == 0).all())
        assert bool((optimizer.state[p]["exp_avg"][m] != 0).all())
    assert nonzeros(pruner) == pruner.keep


def test_hard_prune_on_the_support_of_z():
    x, y = blobs()
    model = small_mlp(seed=4)
    pruner = ADMMPruner(model, all_percent=85.0, rho=1e-2, rho_growth=2.0)
    admm_phase(model, pruner, x, y, iterations=3, steps=10)
    perturb(pruner, seed=9, scale=0.5)  # make Π(W) differ from the support of Z
    z_support = [z != 0 for z in pruner.z]
    w_support = oracle_global_masks([p.detach() for p in pruner.params], pruner.keep)
    assert any(not torch.equal(a, b) for a, b in zip(z_support, w_support, strict=True))
    pruner.hard_prune(support="z")
    for m, s, p in zip(pruner.masks, z_support, pruner.params, strict=True):
        assert torch.equal(m, s)
        assert bool((p.detach()[~m] == 0).all())
    assert nonzeros(pruner) == pruner.keep


def test_hard_prune_on_the_weights_keeps_the_largest_weights():
    model = small_mlp(seed=5)
    pruner = ADMMPruner(model, all_percent=95.0)
    weights = [p.detach().clone() for p in pruner.params]
    pruner.hard_prune()
    for m, e, w, p in zip(pruner.masks, oracle_global_masks(weights, pruner.keep), weights,
                          pruner.params, strict=True):
        assert torch.equal(m, e)
        assert torch.equal(p.detach(), w * m)


def test_penalty_after_hard_prune_is_only_the_l2_term():
    model = small_mlp(seed=6)
    pruner = ADMMPruner(model, all_percent=50.0, rho=1.0)
    perturb(pruner, seed=1)
    assert float(pruner.penalty().detach()) > 0
    pruner.hard_prune()
    assert float(pruner.penalty()) == 0.0
    with_l2 = ADMMPruner(small_mlp(seed=6), all_percent=50.0, p_lambda=0.5)
    with_l2.hard_prune()
    expected = 0.25 * sum(float(p.detach().pow(2).sum()) for p in with_l2.params)
    assert float(with_l2.penalty().detach()) == pytest.approx(expected)


# -- layer-wise projection ----------------------------------------------------------------------


def test_layerwise_projection_gives_every_layer_the_same_ratio():
    x, y = blobs()
    model = small_mlp(seed=7)
    pruner = ADMMPruner(model, all_percent=50.0, projection="layerwise", rho=1e-2)
    sizes = [p.numel() for p in pruner.params]
    assert sizes == [256, 1024, 64]
    expected = [n - round(0.5 * n) for n in sizes]
    assert [int(z.count_nonzero()) for z in pruner.z] == expected
    admm_phase(model, pruner, x, y, iterations=2, steps=5)
    assert [int(z.count_nonzero()) for z in pruner.z] == expected
    report = pruner.hard_prune()
    assert [r.kept for r in report] == expected
    assert all(r.kept_fraction == pytest.approx(0.5) for r in report)


def test_layerwise_projection_with_given_ratios():
    model = small_mlp(seed=8)
    pruner = ADMMPruner(model, all_percent=50.0, projection="layerwise",
                        layer_percents=[30.0, 90.0, 0.0])
    report = pruner.hard_prune()
    assert [r.kept for r in report] == [256 - round(0.3 * 256), 1024 - round(0.9 * 1024), 64]


def test_global_projection_can_give_layers_different_ratios():
    model = small_mlp(seed=9)
    with torch.no_grad():
        model.classifier.weight.fill_(5.0)  # one layer of much larger weights
    pruner = ADMMPruner(model, all_percent=90.0)
    report = pruner.hard_prune()
    assert report[2].kept == 64  # all of the large layer survives
    assert sum(r.kept for r in report) == pruner.keep


# -- progressive stages ----------------------------------------------------------------------


def test_progressive_stages_reach_the_exact_k_and_never_revive_removed_weights():
    x, y = blobs(seed=2)
    model = small_mlp(seed=10)
    pruner = ADMMPruner(model, all_percent=50.0, rho=1e-2, rho_growth=2.0)
    admm_phase(model, pruner, x, y, iterations=2, steps=10)
    pruner.hard_prune()
    stage1 = [m.clone() for m in pruner.masks]
    assert sum(int(m.sum()) for m in stage1) == survivor_count(1344, 50.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, pruner, optimizer, x, y, 10, enforce=True)

    pruner.start_stage(80.0)
    assert not pruner.pruned and pruner.keep == survivor_count(1344, 80.0)

    def removed_stay_zero():
        for p, m in zip(pruner.params, stage1, strict=True):
            assert bool((p.detach()[~m] == 0).all())

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        train(model, pruner, optimizer, x, y, 10, after_step=removed_stay_zero)
        pruner.admm_step()
        for z, m in zip(pruner.z, stage1, strict=True):
            assert bool((z[~m] == 0).all())
    # something outside the loop writes large values where stage 1 removed weights
    with torch.no_grad():
        for p, m in zip(pruner.params, stage1, strict=True):
            p[~m] = 10.0
    pruner.hard_prune()
    assert nonzeros(pruner) == pruner.keep == survivor_count(1344, 80.0)
    for new, old in zip(pruner.masks, stage1, strict=True):
        assert not bool((new & ~old).any())  # the new support lies inside the old one


def test_allow_regrowth_lets_a_later_stage_revive_removed_weights():
    x, y = blobs(seed=3)
    model = small_mlp(seed=11)
    pruner = ADMMPruner(model, all_percent=50.0, allow_regrowth=True)
    pruner.hard_prune()
    stage1 = [m.clone() for m in pruner.masks]
    pruner.start_stage(80.0)
    assert pruner.masks is None
    # the W-step may now move removed weights again
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, pruner, optimizer, x, y, 3)
    revived = sum(int((p.detach()[~m] != 0).sum()) for p, m in
                  zip(pruner.params, stage1, strict=True))
    assert revived > 0
    with torch.no_grad():
        p, m = pruner.params[1], stage1[1]
        position = (~m).reshape(-1).nonzero()[0, 0]
        p.view(-1)[position] = 10.0
    pruner.hard_prune()
    assert bool(pruner.masks[1].reshape(-1)[position])
    assert nonzeros(pruner) == pruner.keep


def test_a_stage_that_keeps_more_weights_raises_without_allow_regrowth():
    pruner = ADMMPruner(small_mlp(seed=12), all_percent=80.0)
    pruner.hard_prune()
    with pytest.raises(PrunerError, match="allow_regrowth"):
        pruner.start_stage(50.0)
    assert pruner.all_percent == 80.0 and pruner.pruned  # nothing changed
    pruner.start_stage(80.0)  # the same ratio is fine
    pruner.start_stage(90.0)
    assert pruner.keep == survivor_count(1344, 90.0)


def test_a_stage_that_keeps_more_weights_works_with_allow_regrowth():
    pruner = ADMMPruner(small_mlp(seed=12), all_percent=80.0, allow_regrowth=True)
    pruner.hard_prune()
    pruner.start_stage(50.0)
    pruner.admm_step()
    assert sum(int(z.count_nonzero()) for z in pruner.z) <= survivor_count(1344, 50.0)
    pruner.hard_prune()
    assert sum(int(m.sum()) for m in pruner.masks) == survivor_count(1344, 50.0)


# -- state ------------------------------------------------------------------------------------


def assert_same_state(a: ADMMPruner, b: ADMMPruner) -> None:
    assert a.names == b.names
    assert a.all_percent == b.all_percent and a.keep == b.keep
    assert a.rho == b.rho and a.iteration == b.iteration and a.pruned == b.pruned
    assert a.history == b.history
    for x, y in zip(a.z, b.z, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.u, b.u, strict=True):
        assert torch.equal(x, y)
    if a.masks is None:
        assert b.masks is None
    else:
        for x, y in zip(a.masks, b.masks, strict=True):
            assert torch.equal(x, y)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("with_masks", [False, True], ids=["admm", "second-stage"])
def test_state_dict_round_trip_reproduces_the_next_step(with_masks):
    model = small_mlp(seed=13)
    settings = {"rho_growth": 1.5, "rho_max": 1.0, "p_lambda": 1e-3}
    pruner = ADMMPruner(model, all_percent=60.0, rho=0.02, **settings)
    perturb(pruner, seed=1)
    pruner.admm_step()
    if with_masks:
        pruner.hard_prune()
        pruner.start_stage(85.0)
    perturb(pruner, seed=2)
    pruner.admm_step()

    twin = copy.deepcopy(model)
    fresh = ADMMPruner(twin, all_percent=10.0, rho=0.5, **settings)
    fresh.load_state_dict(roundtrip(pruner.state_dict()))
    assert_same_state(pruner, fresh)
    assert fresh.masks is not None if with_masks else fresh.masks is None

    perturb(pruner, seed=3)
    perturb(fresh, seed=3)
    record = pruner.admm_step()
    assert fresh.admm_step() == record
    assert_same_state(pruner, fresh)
    pruner.hard_prune()
    fresh.hard_prune()
    assert_same_state(pruner, fresh)
    for p, q in zip(pruner.params, fresh.params, strict=True):
        assert torch.equal(p, q)


def test_state_dict_after_hard_prune_restores_the_masks_and_their_enforcement():
    x, y = blobs()
    model = small_mlp(seed=14)
    pruner = ADMMPruner(model, all_percent=70.0)
    pruner.hard_prune()
    state = roundtrip(pruner.state_dict())
    twin = copy.deepcopy(model)
    fresh = ADMMPruner(twin, all_percent=70.0)
    fresh.load_state_dict(state)
    assert_same_state(pruner, fresh)
    optimizer = torch.optim.Adam(twin.parameters(), lr=1e-2)
    train(twin, fresh, optimizer, x, y, 5, enforce=True)
    for p, m in zip(fresh.params, fresh.masks, strict=True):
        assert bool((p.detach()[~m] == 0).all())
        assert bool((optimizer.state[p]["exp_avg"][~m] == 0).all())
    assert nonzeros(fresh) == fresh.keep


def test_load_state_dict_into_a_model_with_other_layers_raises():
    state = ADMMPruner(small_mlp(), all_percent=50.0).state_dict()
    other = ADMMPruner(admmprune.create_model("lenet5"), all_percent=50.0)
    with pytest.raises(PrunerError, match="other prunable tensors"):
        other.load_state_dict(state)


def test_load_state_dict_into_layers_of_other_shapes_raises():
    state = ADMMPruner(small_mlp(width=32), all_percent=50.0).state_dict()
    other = ADMMPruner(small_mlp(width=16), all_percent=50.0)  # same names, other shapes
    with pytest.raises(PrunerError, match="shape"):
        other.load_state_dict(state)


def test_rho_max_inf_is_no_cap():
    pruner = ADMMPruner(small_mlp(), all_percent=50.0, rho=0.01, rho_growth=2.0,
                        rho_max=float("inf"))
    pruner.admm_step()
    assert pruner.rho == pytest.approx(0.02)


# -- the fused penalty and the in-place Z-step against the reference formulas ------------------


def test_penalty_matches_the_reference_formula_value_and_gradient():
    model = small_mlp(seed=15)
    pruner = ADMMPruner(model, all_percent=70.0, rho=0.2, rho_growth=1.5, p_lambda=0.03)
    for seed in range(3):
        perturb(pruner, seed=seed, scale=0.2)
        pruner.admm_step()
        params = pruner.params
        expected = admm_module.admm_penalty(params, pruner.z, pruner.u, pruner.rho) + \
            admm_module.weight_decay_penalty(params, pruner.p_lambda)
        want = torch.autograd.grad(expected, params)
        got_value = pruner.penalty()
        got = torch.autograd.grad(3.0 * got_value, params)  # a scaled loss scales them
        assert float(got_value.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, 3.0 * w)


def test_penalty_gradients_accumulate_into_grad_batch_after_batch():
    model = small_mlp(seed=16)
    pruner = ADMMPruner(model, all_percent=60.0, rho=0.5)
    perturb(pruner, seed=1)
    pruner.admm_step()
    expected = [pruner.rho * (p.detach() - z + u) for p, z, u in
                zip(pruner.params, pruner.z, pruner.u, strict=True)]
    kept = []
    for _ in range(2):  # the gradient buffers are reused: earlier results must not change
        model.zero_grad()
        pruner.penalty().backward()
        kept.append([p.grad for p in pruner.params])
    grads = torch.autograd.grad(pruner.penalty(), pruner.params)
    again = torch.autograd.grad(pruner.penalty(), pruner.params)
    for results in (*kept, grads, again):
        for g, e in zip(results, expected, strict=True):
            torch.testing.assert_close(g, e)
    assert all(a is not b for a, b in zip(grads, again, strict=True))


def test_penalty_follows_z_and_u_edited_in_place_or_replaced():
    pruner = ADMMPruner(small_mlp(seed=17), all_percent=60.0, rho=1.0)
    perturb(pruner, seed=2)
    before = float(pruner.penalty().detach())
    with torch.no_grad():
        pruner.u[0].add_(1.0)
    moved = float(pruner.penalty().detach())
    pruner.z = [z.clone() for z in pruner.z]
    pruner.u = [torch.zeros_like(u) for u in pruner.u]
    reset = float(pruner.penalty().detach())
    reference = float(admm_module.admm_penalty(pruner.params, pruner.z, pruner.u, 1.0).detach())
    assert moved > before and reset == pytest.approx(reference, rel=1e-6)


def test_backward_after_admm_step_refuses_a_stale_penalty():
    pruner = ADMMPruner(small_mlp(seed=18), all_percent=60.0, rho=1.0)
    penalty = pruner.penalty()
    perturb(pruner, seed=3)  # the weights changed in place after the forward pass
    with pytest.raises(RuntimeError, match="inplace"):
        penalty.backward()


def test_admm_steps_equal_the_pure_reference_functions():
    model = small_mlp(seed=19)
    pruner = ADMMPruner(model, all_percent=75.0, rho=0.05, rho_growth=2.0, rho_max=0.3)
    z = [t.clone() for t in pruner.z]
    u = [t.clone() for t in pruner.u]
    rho = pruner.rho
    for seed in range(4):
        perturb(pruner, seed=seed, scale=0.3)
        w = [p.detach().clone() for p in pruner.params]
        target = [a + b for a, b in zip(w, u, strict=True)]
        z_new = admm_module.project(target, oracle_global_masks(target, pruner.keep))
        u = admm_module.update_dual(u, w, z_new)
        res = admm_module.residuals(w, z_new, z, rho)
        new_rho = admm_module.next_rho(rho, 2.0, 0.3)
        u = admm_module.rescale_dual(u, rho, new_rho)
        z, rho = z_new, new_rho
        record = pruner.admm_step()
        for a, b in zip(pruner.z, z, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(pruner.u, u, strict=True):
            assert torch.equal(a, b)
        assert record["primal_residual"] == pytest.approx(res.primal, rel=1e-6)
        assert record["dual_residual"] == pytest.approx(res.dual, rel=1e-6)
        assert pruner.rho == rho


def test_a_failing_admm_step_leaves_z_u_and_rho_unchanged():
    pruner = ADMMPruner(small_mlp(seed=20), all_percent=60.0, rho=0.1, rho_growth=2.0)
    perturb(pruner, seed=1)
    pruner.admm_step()
    state = copy.deepcopy(pruner.state_dict())
    penalty = float(pruner.penalty().detach())
    with torch.no_grad():
        pruner.params[1][0, 0] = float("nan")
    with pytest.raises(PrunerError, match="NaN"):
        pruner.admm_step()
    assert pruner.rho == state["rho"] and pruner.iteration == state["iteration"]
    assert pruner.history == state["history"]
    for a, b in zip(pruner.z + pruner.u, state["z"] + state["u"], strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        pruner.params[1][0, 0] = 0.0
    after = float(pruner.penalty().detach())  # recomputed from the unchanged Z and U
    reference = admm_module.admm_penalty(pruner.params, pruner.z, pruner.u, pruner.rho)
    assert after != penalty and after == pytest.approx(float(reference.detach()), rel=1e-5)


def test_load_state_dict_copies_so_later_steps_leave_the_callers_tensors_alone():
    pruner = ADMMPruner(small_mlp(seed=21), all_percent=60.0)
    state = pruner.state_dict()
    saved = [t.clone() for t in state["z"] + state["u"]]
    pruner.load_state_dict(state)
    perturb(pruner, seed=4)
    pruner.admm_step()
    for a, b in zip(state["z"] + state["u"], saved, strict=True):
        assert torch.equal(a, b)


# -- defects: frozen and shared weights, non-finite values in pruned entries ------------------


def test_hard_prune_with_a_frozen_layer_installs_and_masks():
    model = small_mlp(seed=22)
    model.hidden[0].weight.requires_grad_(False)
    pruner = ADMMPruner(model, all_percent=80.0)
    assert "hidden.0.weight" not in pruner.names
    pruner.hard_prune()
    assert nonzeros(pruner) == pruner.keep


def test_mask_enforcer_installs_all_or_nothing():
    a = nn.Parameter(torch.ones(4))
    b = nn.Parameter(torch.ones(3))
    c = nn.Parameter(torch.ones(2))
    masks = [torch.tensor([True, False, True, False]), torch.tensor([True, False, True]),
             torch.tensor([True, False, True])]  # the last one has the wrong shape
    with pytest.raises(ValueError, match="shape"):
        MaskEnforcer([a, b, c], masks)

    def refuse(hook):
        raise RuntimeError("no hooks here")

    c.register_hook = refuse  # the third hook fails after two are installed
    with pytest.raises(RuntimeError, match="no hooks here"):
        MaskEnforcer([a, b, c], masks[:2] + [torch.tensor([True, False])])
    (a.sum() + b.sum()).backward()
    assert a.grad.tolist() == [1.0] * 4 and b.grad.tolist() == [1.0] * 3  # no hook left
    assert a.detach().tolist() == [1.0] * 4  # and nothing zeroed


def test_hard_prune_failure_keeps_the_previous_masks(monkeypatch):
    pruner = ADMMPruner(small_mlp(seed=23), all_percent=50.0)
    pruner.hard_prune()
    masks = [m.clone() for m in pruner.masks]

    def broken(*args, **kwargs):
        raise RuntimeError("cannot install")

    monkeypatch.setattr(pruner_module, "MaskEnforcer", broken)
    with pytest.raises(RuntimeError, match="cannot install"):
        pruner.hard_prune(support="z")
    for old, now in zip(masks, pruner.masks, strict=True):
        assert torch.equal(old, now)
    monkeypatch.undo()
    pruner.enforce()  # the old enforcer still works


def test_shared_weight_counts_once_and_keeps_exactly_k():
    model = small_mlp(seed=24)
    twin = nn.Linear(32, 32)
    twin.weight = model.hidden[2].weight  # weight tying
    model.add_module("tied", twin)
    pruner = ADMMPruner(model, all_percent=90.0)
    assert pruner.names == ["hidden.0.weight", "hidden.2.weight", "classifier.weight"]
    assert pruner.total == 8 * 32 + 32 * 32 + 32 * 2
    pruner.hard_prune()
    assert nonzeros(pruner) == pruner.keep == survivor_count(1344, 90.0)


def test_enforce_turns_nan_and_inf_in_pruned_entries_into_exact_zeros():
    x, y = blobs()
    model = small_mlp(seed=25)
    pruner = ADMMPruner(model, all_percent=70.0)
    pruner.hard_prune()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(model, pruner, optimizer, x, y, 2)
    with torch.no_grad():
        for p, m in zip(pruner.params, pruner.masks, strict=True):
            p[~m] = float("nan")
            p.view(-1)[(~m).reshape(-1).nonzero()[0]] = float("inf")
            optimizer.state[p]["exp_avg"][~m] = float("nan")
    pruner.enforce(optimizer)
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert bool((p.detach()[~m] == 0).all())
        assert bool((optimizer.state[p]["exp_avg"][~m] == 0).all())
    assert nonzeros(pruner) == pruner.keep


def test_nan_gradients_at_pruned_entries_are_masked_to_zero():
    model = small_mlp(seed=26)
    pruner = ADMMPruner(model, all_percent=70.0)
    pruner.hard_prune()
    weight, mask = pruner.params[0], pruner.masks[0]
    (weight * torch.full_like(weight, float("nan"))).sum().backward()
    assert bool((weight.grad[~mask] == 0).all())
