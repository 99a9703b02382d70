"""retraining_regrow: drop-and-grow mask updates during the final retraining."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from admmprune.pruner import ADMMPruner, PrunerError
from admmprune.regrow import MaskRefiner, drop_and_grow, swap_fraction
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.runs.rundir import RunError, resume_changes


def config(**overrides):
    base = dict(dataset="synthetic", model="lenet5", train_subset=128, test_subset=32,
                batch_size=16, dense_epochs=1, all_percent=97.0, k_step=1,
                retraining_epochs=4, retraining_regrow=0.3, retraining_regrow_every=2,
                retraining_regrow_until=0.5, progress=False, seed=5)
    return load_config(None, {**base, **overrides})


def _records(run_dir, phase):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("phase") == phase]


def test_drop_and_grow_swaps_the_weakest_for_the_steepest():
    weights = torch.tensor([[0.0, 5.0, 0.1, 0.0], [3.0, 0.0, 0.0, 2.0]])
    mask = weights != 0
    grads = torch.tensor([[9.0, 1.0, 1.0, 0.5], [0.0, 4.0, 0.2, 0.0]])
    (new,) = drop_and_grow([weights], [grads], [mask], fraction=0.5)
    # 4 kept, 2 swapped: 0.1 and 2.0 leave, the gradients 9.0 and 4.0 come in
    assert new.tolist() == [[True, True, False, False], [True, True, False, False]]
    (same,) = drop_and_grow([weights], [grads], [mask], fraction=0.0)
    assert torch.equal(same, mask)


def test_drop_and_grow_keeps_every_layer_count():
    torch.manual_seed(0)
    weights = [torch.randn(30, 20), torch.randn(7, 3, 3)]
    masks = [w.abs() > 1.5 for w in weights]
    grads = [torch.randn_like(w) for w in weights]
    for fraction in (0.1, 0.5, 1.0):
        new = drop_and_grow(weights, grads, masks, fraction)
        assert [int(m.sum()) for m in new] == [int(m.sum()) for m in masks]
        moved_in = int((new[0] & ~masks[0]).sum())
        assert moved_in <= int(fraction * masks[0].sum())
    full = torch.ones(4, dtype=torch.bool)  # nothing to grow into
    (kept,) = drop_and_grow([torch.ones(4)], [torch.ones(4)], [full], 1.0)
    assert bool(kept.all())


def test_drop_and_grow_refuses_bad_input():
    w = torch.ones(3)
    with pytest.raises(ValueError, match="fraction"):
        drop_and_grow([w], [w], [w > 0], 1.5)
    with pytest.raises(ValueError, match="shapes differ"):
        drop_and_grow([w], [torch.ones(4)], [w > 0], 0.5)


def test_swap_fraction_decays_to_zero_at_until():
    assert swap_fraction(0.3, 0.0, 0.75) == pytest.approx(0.3)
    assert swap_fraction(0.3, 0.375, 0.75) == pytest.approx(0.15)
    assert swap_fraction(0.3, 0.75, 0.75) == 0.0
    assert swap_fraction(0.3, 0.9, 0.75) == 0.0


def _pruned(percent=90.0):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))
    pruner = ADMMPruner(model, all_percent=percent)
    pruner.hard_prune()
    return model, pruner


def _backward(model):
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()


def test_refine_masks_moves_weights_and_keeps_the_new_mask():
    model, pruner = _pruned()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [m.clone() for m in pruner.masks]
    pruner.capture_gradients(True)
    _backward(model)
    optimizer.step()
    pruner.enforce()
    for state in optimizer.state.values():  # as if every entry had been kept once
        state["exp_avg"].fill_(1.0)
    moved = pruner.refine_masks(0.5, optimizer)
    assert moved > 0
    after = pruner.masks
    assert [int(m.sum()) for m in after] == [int(m.sum()) for m in before]
    for p, old, new in zip(pruner.params, before, after, strict=True):
        grown = new & ~old
        assert bool((p[~new] == 0).all())  # dropped weights are zero
        assert bool((p[grown] == 0).all())  # grown ones start at zero
        for value in optimizer.state[p].values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert bool((value[grown] == 0).all())
    optimizer.zero_grad()
    _backward(model)  # the new hooks: gradients flow to grown entries only, not dropped
    for p, new in zip(pruner.params, after, strict=True):
        assert bool((p.grad[~new] == 0).all())
        assert bool((p.grad[new] != 0).any())


def test_refine_masks_needs_captured_gradients_and_single_weights():
    model, pruner = _pruned()
    with pytest.raises(PrunerError, match="capture_gradients"):
        pruner.refine_masks(0.3)
    pruner.capture_gradients(True)
    _backward(model)
    pruner.capture_gradients(False)  # switching forgets what was kept
    with pytest.raises(PrunerError, match="backward pass"):
        pruner.refine_masks(0.3)
    fresh = ADMMPruner(nn.Sequential(nn.Linear(4, 4)), all_percent=50.0)
    with pytest.raises(PrunerError, match="hard_prune"):
        fresh.capture_gradients(True)


def test_refiner_updates_on_schedule_and_stops_at_until():
    model, pruner = _pruned()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    refiner = MaskRefiner(pruner, fraction=0.5, every=3, until=0.5, total_steps=12)
    history = []
    for _ in range(12):
        _backward(model)
        optimizer.step()
        optimizer.zero_grad()
        pruner.enforce()
        masks = [m.clone() for m in pruner.masks]
        refiner.after_step(optimizer)
        history.append(any(not torch.equal(a, b) for a, b in zip(masks, pruner.masks,
                                                                  strict=True)))
    changed = [i + 1 for i, c in enumerate(history) if c]
    assert changed and set(changed) <= {3}  # step 6 is at until: no more updates
    assert not pruner._enforcer.capture
    refiner.close()
    with pytest.raises(ValueError, match="every"):
        MaskRefiner(pruner, 0.5, every=0, until=0.5, total_steps=4)


def test_bad_values_are_refused():
    for key, bad in (("retraining_regrow", 1.5), ("retraining_regrow", -0.1),
                     ("retraining_regrow_every", 0), ("retraining_regrow_until", 0.0),
                     ("retraining_regrow_until", 1.2)):
        with pytest.raises(ConfigError, match=key):
            config(**{key: bad})
    with pytest.raises(ConfigError, match="averaged epochs"):
        config(retraining_average_epochs=2, retraining_regrow_until=0.75)
    with pytest.raises(ConfigError, match="keeps groups"):
        config(structure="filter")
    config(retraining_average_epochs=2, retraining_regrow_until=0.5)


def test_run_moves_weights_keeps_the_count_and_resumes_bitwise(tmp_path, interrupt_training):
    fixed = run_pipeline(config(retraining_regrow=0.0), run_dir=tmp_path / "fixed")
    moved = run_pipeline(config(), run_dir=tmp_path / "moved")
    assert moved["kept"] == fixed["kept"]
    records = _records(tmp_path / "moved", "retrain")
    assert records[0]["regrown"] > 0 and records[-1]["regrown"] == 0
    assert "regrown" not in _records(tmp_path / "fixed", "retrain")[0]
    admm = torch.load(tmp_path / "moved" / "admm.pt")["model"]
    final = torch.load(tmp_path / "moved" / "model.pt")
    layers = [n for n, w in final.items() if w.dim() > 1]
    assert any(bool(((admm[n] == 0) & (final[n] != 0)).any()) for n in layers)
    for name in layers:  # each layer keeps the count the global ADMM gave it
        assert int(final[name].count_nonzero()) <= int(admm[name].count_nonzero())

    interrupt_training(4)  # the second retraining epoch, after one mask update
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(), run_dir=tmp_path / "resumed")
    interrupt_training(None)
    run_pipeline(config(), run_dir=tmp_path / "resumed", resume=True)
    resumed = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(final[k], resumed[k]) for k in final)


def test_chosen_after_the_admm_stage(tmp_path):
    run_pipeline(config(retraining_regrow=0.0), run_dir=tmp_path / "run", stage="admm")
    summary = run_pipeline(config(), run_dir=tmp_path / "run", stage="retrain")
    assert summary["complete"]
    assert _records(tmp_path / "run", "retrain")[0]["regrown"] > 0


def test_a_run_saved_before_the_key_existed_records_the_choice():
    saved = {k: v for k, v in config().to_dict().items() if not k.startswith("retraining_regrow")}
    new = config(retraining_regrow=0.2).to_dict()
    changes = resume_changes(saved, new, retraining_started=False, retrain_epochs_done=0)
    assert changes == {"retraining_regrow": [0.0, 0.2], "retraining_regrow_until": [0.75, 0.5],
                       "retraining_regrow_every": [100, 2]}
    with pytest.raises(RunError, match="retraining_regrow"):
        resume_changes(saved, new, retraining_started=True, retrain_epochs_done=1)
