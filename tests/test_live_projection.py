"""The unstructured projection whose budget counts live weights only (live_weights)."""

from __future__ import annotations

import pytest
import torch

import admmprune
from admmprune.channels.liveness import drop_dead_units, filter_readers
from admmprune.projection import global_topk_masks, live_masks, live_topk_masks
from admmprune.pruner import ADMMPruner, PrunerError
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline

# three Linear layers 2 -> 3 -> 3 -> 2: layer j's columns read layer j-1's units one to one
CHAIN = ((), ((0, torch.arange(3), torch.arange(3)),),
         ((1, torch.arange(3), torch.arange(3)),))


def chain_masks(*rows: list[list[int]]) -> list[torch.Tensor]:
    return [torch.tensor(r, dtype=torch.bool) for r in rows]


def test_a_unit_nothing_reads_loses_its_weights_and_the_loss_cascades():
    masks = chain_masks([[1, 1], [1, 0], [0, 1]],   # layer 0: units 0, 1, 2
                        [[1, 0, 0], [0, 1, 0], [0, 1, 0]],  # layer 1 reads units 0, 1
                        [[1, 0, 0], [1, 0, 0]])  # layer 2 (output) reads unit 0 of layer 1
    live, dead = live_masks(masks, CHAIN)
    # layer 1's units 1 and 2 are unread: their weights go; then layer 0's unit 1 is unread
    # (only layer 1's dead rows read it), and unit 2 was never read
    assert dead[2] is None  # the output layer's units are never dead
    assert dead[1].tolist() == [False, True, True]
    assert dead[0].tolist() == [False, True, True]
    assert live[1].tolist() == [[True, False, False], [False] * 3, [False] * 3]
    assert live[0].tolist() == [[True, True], [False, False], [False, False]]
    assert torch.equal(live[2], masks[2])
    # the input masks are not modified
    assert masks[1].sum() == 3


def test_the_budget_counts_live_weights_and_refills_with_the_next_best():
    scores = [torch.tensor([[9.0, 8.0], [7.0, 0.1], [6.0, 0.2]]),
              torch.tensor([[5.0, 0.3, 0.4], [0.5, 0.6, 0.7], [0.8, 0.9, 1.0]]),
              torch.tensor([[4.0, 0.05, 0.06], [3.0, 0.07, 0.08]])]
    plain = global_topk_masks(scores, 7)
    # plain top-7 keeps 9, 8, 7, 6 in layer 0, but layer 1 reads only unit 0: 7 and 6 are dead
    assert live_masks(plain, CHAIN)[0][0].sum() == 2
    chosen = live_topk_masks(scores, 7, CHAIN)
    assert sum(int(m.sum()) for m in chosen) == 7
    again, _ = live_masks(chosen, CHAIN)
    assert all(torch.equal(a, c) for a, c in zip(again, chosen, strict=True))
    # 9, 8, 5, 4, 3 stay; two more live weights come in for the dead 7 and 6
    assert chosen[0][0].all() and chosen[1][0, 0] and chosen[2][:, 0].all()
    assert sum(float(s[m].sum()) for s, m in zip(scores, chosen, strict=True)) > 29.0


def test_without_dead_weights_it_is_plain_top_k():
    torch.manual_seed(0)
    scores = [torch.rand(3, 2), torch.rand(3, 3), torch.rand(2, 3)]
    keep = 14  # dense enough that every unit is read
    plain = global_topk_masks(scores, keep)
    assert all(torch.equal(a, b) for a, b in zip(live_masks(plain, CHAIN)[0], plain,
                                                   strict=True))
    assert all(torch.equal(a, b) for a, b in
               zip(live_topk_masks(scores, keep, CHAIN), plain, strict=True))


@pytest.mark.parametrize("keep", [1, 3, 5, 8, 12])
def test_random_scores_give_exactly_keep_live_weights(keep):
    for seed in range(20):
        torch.manual_seed(seed)
        scores = [torch.rand(3, 2), torch.rand(3, 3), torch.rand(2, 3)]
        chosen = live_topk_masks(scores, keep, CHAIN)
        assert sum(int(m.sum()) for m in chosen) == keep
        again, _ = live_masks(chosen, CHAIN)
        assert all(torch.equal(a, c) for a, c in zip(again, chosen, strict=True))


def test_entries_outside_the_allowed_support_are_never_chosen():
    torch.manual_seed(3)
    scores = [torch.rand(3, 2), torch.rand(3, 3), torch.rand(2, 3)]
    allowed = [torch.rand(s.shape) > 0.3 for s in scores]
    fenced = [torch.where(a, s, -1.0) for s, a in zip(scores, allowed, strict=True)]
    chosen = live_topk_masks(fenced, 4, CHAIN, allowed)
    assert sum(int(m.sum()) for m in chosen) <= 4
    assert all(not (m & ~a).any() for m, a in zip(chosen, allowed, strict=True))
    assert live_masks(chosen, CHAIN)[0][0].sum() == chosen[0].sum()


def lenet_pruner(percent: float, live: bool, **kwargs) -> ADMMPruner:
    torch.manual_seed(0)
    model = admmprune.create_model("lenet5")
    return ADMMPruner(model, all_percent=percent, live_weights=live,
                      example_inputs=torch.randn(2, 1, 28, 28) if live else None, **kwargs)


def test_lenet5_hard_prune_keeps_exactly_the_budget_and_no_dead_weight():
    plain = lenet_pruner(99.65, live=False)
    plain.hard_prune()
    report = drop_dead_units(plain.model, torch.randn(2, 1, 28, 28))
    assert report.weights_zeroed > 0  # the case this exists for

    pruner = lenet_pruner(99.65, live=True)
    pruner.hard_prune()
    assert sum(int(m.sum()) for m in pruner.masks) == pruner.keep == 1507
    model = pruner.model
    kept = sum(int(p.count_nonzero()) for n, p in model.named_parameters() if "weight" in n)
    assert kept == 1507
    report = drop_dead_units(model, torch.randn(2, 1, 28, 28))
    assert report.applied and report.weights_zeroed == 0


def test_admm_z_steps_use_the_live_budget():
    pruner = lenet_pruner(99.65, live=True)
    for step in range(2):  # Z at the start (Z = Pi(W)) and after one ADMM iteration
        if step:
            with torch.no_grad():
                for p in pruner.params:
                    p.add_(0.01 * torch.randn_like(p))
            pruner.admm_step()
        masks = [z != 0 for z in pruner.z]
        assert sum(int(m.sum()) for m in masks) == 1507
        again, _ = live_masks(masks, pruner.options.readers)
        assert all(torch.equal(a, m) for a, m in zip(again, masks, strict=True))


class Fork(torch.nn.Module):
    """One hidden layer read by two heads: ``a`` (pruned) and ``b`` (left dense)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(8, 6)
        self.a = torch.nn.Linear(6, 3)
        self.b = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x))
        return self.a(h) + self.b(h)


def test_a_unit_read_by_a_layer_outside_the_prunable_set_is_never_dead():
    model = Fork()
    names = ["hidden.weight", "a.weight"]
    example = torch.randn(2, 8)
    loose = filter_readers(model, names, example)
    strict = filter_readers(model, names, example, strict=True)
    assert len(loose[1]) == 1  # a's columns read hidden's units ...
    assert strict == ((), ())  # ... but so does b, which is not pruned: never dead
    # `a` keeps nothing that reads hidden's units 0-2; with the strict map they stay live
    torch.manual_seed(0)
    with torch.no_grad():
        model.a.weight[:, :3] = 0
        model.a.weight[:, 3:] = 10.0
    pruner = ADMMPruner(model, all_percent=60.0, exclude=["b"], live_weights=True,
                        example_inputs=example)
    assert pruner.names == names
    plain = global_topk_masks([p.detach().abs() for p in pruner.params], pruner.keep)
    pruner.hard_prune()
    assert all(torch.equal(m, p) for m, p in zip(pruner.masks, plain, strict=True))
    assert pruner.masks[0][:3].any()


def test_live_weights_refuses_what_it_cannot_do():
    model = admmprune.create_model("lenet5")
    with pytest.raises(PrunerError, match="example_inputs"):
        ADMMPruner(model, all_percent=90.0, live_weights=True)
    with pytest.raises(PrunerError, match="unstructured"):
        ADMMPruner(model, all_percent=90.0, live_weights=True, structure="filter",
                   example_inputs=torch.randn(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="set live_weights false"):
        load_config(None, {"live_weights": True, "structure": "channel"})
    with pytest.raises(ConfigError, match="set live_weights false"):
        load_config(None, {"live_weights": True, "projection": "layerwise"})
    assert load_config(None, {"live_weights": True, "structure": "filter"}).live_weights
    assert load_config(None, {"live_weights": True}).live_weights is True


def test_pipeline_with_live_weights_keeps_no_dead_weight(tmp_path):
    torch.set_num_threads(1)
    config = load_config(None, dict(
        dataset="synthetic", model="lenet5", train_subset=64, test_subset=32, batch_size=32,
        dense_epochs=1, all_percent=99.5, k_step=2, live_weights=True, retraining_epochs=1,
        progress=False, threads=1))
    summary = run_pipeline(config, run_dir=tmp_path / "run")
    model = admmprune.create_model("lenet5")
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt"))
    kept = sum(int(p.count_nonzero()) for n, p in model.named_parameters() if "weight" in n)
    assert kept == summary["kept"] == round(summary["total"] * 0.005)
    assert drop_dead_units(model, torch.randn(2, 1, 28, 28)).weights_zeroed == 0
