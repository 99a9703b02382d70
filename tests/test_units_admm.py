"""Training-time structured ADMM for transformers (structure ``units``): whole MLP neurons and
attention groups, coupled across the tensors they span, under one global ratio; the pruned
model shrinks to a smaller one that computes the same outputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from admmprune import ADMMPruner
from admmprune.cli import main
from admmprune.export.huggingface import load_huggingface
from admmprune.posttraining.units import shrink_units, unit_families
from admmprune.projection import GROUP_SCORES, ProjectionError, StructureOptions
from admmprune.pruner import PrunerError
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.unit_projection import UnitFamily, unit_masks, unit_rows

transformers = pytest.importorskip("transformers")


def units(count: int) -> torch.Tensor:
    return torch.arange(count)[:, None]


def toy() -> tuple[list[torch.Tensor], tuple[UnitFamily, ...]]:
    """Family a: 4 units, rows of t0 [4, 3] and columns of t1 [5, 4] (8 weights each);
    family b: 3 units of two rows of t2 [6, 2] (4 weights each)."""
    torch.manual_seed(0)
    values = [torch.randn(4, 3), torch.randn(5, 4), torch.randn(6, 2)]
    families = (UnitFamily("a", 4, ((0, 0, units(4)), (1, 1, units(4)))),
                UnitFamily("b", 3, ((2, 0, torch.arange(6).reshape(3, 2)),)))
    return values, families


def unit_state(masks: list[torch.Tensor], family: UnitFamily) -> torch.Tensor:
    """Per unit: True kept whole, False removed whole (fails on a partly kept unit)."""
    rows = unit_rows(masks, family)
    assert bool((rows.all(1) | ~rows.any(1)).all()), "a unit is partly kept"
    return rows.all(1)


def test_a_unit_survives_or_goes_in_every_tensor_it_spans_and_the_budget_rule_holds():
    values, families = toy()
    options = StructureOptions(units=families)
    scores = [GROUP_SCORES["l2"](unit_rows(values, f)) for f in families]
    total = sum(v.numel() for v in values)
    for keep in range(0, total + 1, 3):
        masks = unit_masks(values, keep, None, None, options)
        kept = [unit_state(masks, f) for f in families]
        weights = sum(int(m.sum()) for m in masks)
        largest = max(f.unit_size(values) for f in families)
        assert weights >= keep
        assert weights - keep < largest or all(int(k.sum()) == 1 for k in kept)
        # every family keeps its best unit; beyond those, no removed unit outscores a kept one
        for k, s in zip(kept, scores, strict=True):
            assert bool(k[int(torch.argmax(s))])
        extra = [float(s[i]) for k, s in zip(kept, scores, strict=True)
                 for i in range(len(s)) if k[i] and i != int(torch.argmax(s))]
        removed = [float(s[i]) for k, s in zip(kept, scores, strict=True)
                   for i in range(len(s)) if not k[i]]
        if extra and removed:
            assert min(extra) >= max(removed)


def test_units_of_different_sizes_compare_by_their_rms():
    # family a's units are large with small entries, family b's small with large ones: at a
    # budget for about half, b keeps all its units and a only its best
    a = torch.full((4, 10), 0.1) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    b = torch.ones(3, 2)
    families = (UnitFamily("a", 4, ((0, 0, units(4)),)), UnitFamily("b", 3, ((1, 0, units(3)),)))
    masks = unit_masks([a, b], 16, None, None, StructureOptions(units=families))
    assert unit_state(masks, families[0]).tolist() == [False, False, False, True]
    assert unit_state(masks, families[1]).all()


def test_layerwise_units_remove_each_familys_share_and_members_must_agree():
    values, families = toy()
    masks = unit_masks(values, None, 50.0, None, StructureOptions(units=families))
    # keep n - round(p n / 100), the rule of group_masks: 4 - 2 and 3 - round(1.5) = 3 - 2
    assert [int(unit_state(masks, f).sum()) for f in families] == [2, 1]
    with pytest.raises(ProjectionError, match="different ratios"):
        unit_masks(values, None, [50.0, 25.0, 50.0], None, StructureOptions(units=families))


def test_removed_units_stay_removed_and_bad_input_is_refused():
    values, families = toy()
    options = StructureOptions(units=families)
    first = unit_masks(values, 20, None, None, options)
    # larger values everywhere would keep more units, but removed ones may not come back
    again = unit_masks([v * 10 for v in values], 20, None, first, options)
    for f in families:
        assert not bool((unit_state(again, f) & ~unit_state(first, f)).any())
    with pytest.raises(ProjectionError, match="belong to no unit family"):
        unit_masks(values + [torch.ones(2, 2)], 10, None, None, options)
    with pytest.raises(ProjectionError, match="NaN"):
        unit_masks([values[0] * float("nan"), *values[1:]], 10, None, None, options)
    with pytest.raises(ProjectionError, match="needs the unit families"):
        unit_masks(values, 10, None, None, StructureOptions())


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_the_pruned_model_shrinks_to_exactly_its_kept_units_with_equal_outputs(build):
    model = build()
    pruner = ADMMPruner(model, 60.0, structure="units")
    assert {f.name.rpartition(" ")[2] for f in pruner.options.units} == {"neurons", "groups"}
    pruner.hard_prune()
    kept = sum(int(m.sum()) for m in pruner.masks)
    assert pruner.keep <= kept < pruner.keep + max(f.unit_size(pruner.params)
                                                   for f in pruner.options.units)
    ids = torch.randint(64, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(ids).logits
    widths = shrink_units(model)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    # the cut model holds the kept units' weights and nothing else
    left = sum(p.numel() for n, p in model.named_parameters() if n in set(pruner.names))
    assert left == kept
    assert len(widths) == 2 and model.config.admmprune_widths == widths


def test_grouped_query_attention_keeps_query_heads_with_their_key_value_head():
    model = tiny_llama()
    pruner = ADMMPruner(model, 60.0, structure="units")
    groups = [f for f in pruner.options.units if f.name.endswith("attention groups")][0]
    (q, _, q_index), (k, _, k_index), (v, _, _), (o, axis, _) = groups.members
    assert q_index.shape == (2, 16) and k_index.shape == (2, 8)  # 2 query heads of 8 per group
    assert axis == 1  # o_proj: its input columns
    assert [pruner.names[i].rpartition(".")[0].rpartition(".")[2] for i in (q, k, v, o)] == \
        ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_weights_outside_the_units_and_units_partly_excluded_are_refused():
    with pytest.raises(PrunerError, match="lm_head.*exclude them"):
        ADMMPruner(tiny_llama(), 50.0, structure="units", include=["*proj", "lm_head"])
    with pytest.raises(PrunerError, match="k_proj.weight, but that weight is not pruned"):
        ADMMPruner(tiny_llama(), 50.0, structure="units", exclude=["*.k_proj"])


def test_families_follow_the_pruners_tensor_order():
    model = tiny_gpt2()
    names = [n for n, _ in model.named_parameters() if n.endswith("weight") and ".h." in n
             and "ln_" not in n]
    families = unit_families(model, names)
    touched = sorted(t for f in families for t, _, _ in f.members)
    assert touched == list(range(len(names)))  # each Conv1D weight in exactly one family
    kinds = ("MLP neurons", "attention groups")
    for f, (i, kind) in zip(families, itertools.product(range(2), kinds), strict=True):
        assert f.name == f"transformer.h.{i} {kind}"


def units_run(corpus, model: str = "gpt"):
    args = {"n_layer": 2, "n_embd": 32, "n_head": 2, "context": 16}
    if model == "llama":
        args = {**args, "n_head": 4, "n_kv_head": 2}
    return load_config(None, dict(
        model=model, model_args=args, dataset="text", task="language-modeling",
        data_dir=str(corpus), train_subset=96, test_subset=32, batch_size=16, dense_epochs=1,
        all_percent=50.0, k_step=2, rho=1e-2, retraining_epochs=1, progress=False, seed=1,
        threads=1, structure="units"))


def test_an_interrupted_units_run_resumes_bitwise(code_corpus, tmp_path, interrupt_training):
    straight = run_pipeline(units_run(code_corpus, "llama"), run_dir=tmp_path / "straight")
    interrupt_training(3)  # inside the ADMM iterations
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(units_run(code_corpus, "llama"), run_dir=tmp_path / "resumed")
    interrupt_training(None)
    resumed = run_pipeline(units_run(code_corpus, "llama"), run_dir=tmp_path / "resumed",
                           resume=True)
    assert resumed["kept"] == straight["kept"]
    first = torch.load(tmp_path / "straight" / "model.pt")
    second = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_tiny_gpt_run_prunes_units_and_shrink_writes_a_smaller_huggingface_model(
        code_corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = run_pipeline(units_run(code_corpus), run_dir=run_dir)
    assert summary["kept"] >= summary["total"] // 2
    state = torch.load(run_dir / "model.pt")
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    assert "collapsing" not in capsys.readouterr().out  # empty rows are the point here
    assert main(["shrink", str(run_dir), "--onnx"]) == 0
    assert "onnxruntime's logits match" in capsys.readouterr().out
    assert (run_dir / "model-shrunk" / "model.onnx").is_file()
    small = load_huggingface(run_dir / "model-shrunk")
    assert sum(p.numel() for n, p in small.named_parameters() if ".h." in n and "ln_" not in n
               and n.endswith("weight")) == summary["kept"]
    from admmprune.models import create_model

    masked = create_model("gpt", n_layer=2, n_embd=32, n_head=2, context=16)
    masked.load_state_dict(state)
    ids = torch.randint(256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(small(ids).logits, masked.eval()(ids), atol=1e-5)
    assert main(["shrink", str(run_dir)]) == 2  # the directory exists: nothing overwritten


def test_shrink_refuses_a_run_of_single_weights_with_the_units_hint(code_corpus, tmp_path,
                                                                    capsys):
    config = load_config(None, dict(
        model="gpt", model_args={"n_layer": 1, "n_embd": 16, "n_head": 2, "context": 8},
        dataset="text", task="language-modeling", data_dir=str(code_corpus), train_subset=32,
        test_subset=16, batch_size=16, dense_epochs=0, all_percent=50.0, k_step=1,
        retraining_epochs=0, progress=False, seed=1, threads=1))
    run_pipeline(config, run_dir=tmp_path / "run")
    assert main(["shrink", str(tmp_path / "run")]) == 2
    assert "structure: units" in capsys.readouterr().err


@pytest.mark.parametrize("group_score", ["l2", "output"])
def test_the_hugging_face_callback_prunes_whole_units(tmp_path, group_score):
    from transformers import Trainer, TrainingArguments

    from admmprune.integrations.transformers import ADMMCallback

    class Tokens(torch.utils.data.Dataset):
        ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return 16

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    model = tiny_gpt2()
    # the output score reads the model on example inputs; l2 needs none
    example = Tokens.ids[:4] if group_score == "output" else None
    callback = ADMMCallback(all_percent=50.0, rho=1e-2, structure="units", dense_epochs=1,
                            k_step=2, epochs=1, retraining_epochs=1, group_score=group_score,
                            example_inputs=example)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             num_train_epochs=4, learning_rate=3e-3, report_to="none",
                             use_cpu=True, logging_strategy="no", disable_tqdm=True,
                             save_strategy="no")
    Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback]).train()
    pruner = callback.pruner
    assert pruner.pruned and pruner.structure == "units"
    assert pruner.options.group_score == group_score
    weights = [p.detach() for p in pruner.params]
    for family in pruner.options.units:
        alive = unit_rows(weights, family).ne(0)
        assert bool((alive.all(1) | ~alive.any(1)).all())  # whole units, in every tensor
    assert pruner.keep <= sum(int(w.count_nonzero()) for w in weights) < pruner.total


def test_compare_runs_the_units_methods_from_one_dense_model(code_corpus, tmp_path):
    from admmprune.runs.compare import run_compare

    methods = ["units", "units-output", "units-layerwise", "units-oneshot"]
    rows = run_compare(units_run(code_corpus), ["dense", *methods], [50.0], tmp_path / "cmp")
    pruned = {r["method"]: r for r in rows if r["method"] != "dense"}
    assert set(pruned) == set(methods)
    for row in pruned.values():
        # whole units: never more removed than asked, less by under one attention group
        # (32 x 16 weights in each of q, k, v and o: 2,048 of the 24,576 block weights)
        assert 50.0 - 100 * 2048 / 24576 < row["sparsity_percent"] <= 50.0
        assert row["pruned_bpb"] < 8.0  # better than uniform over 256 bytes
    assert "units-oneshot" in (tmp_path / "cmp" / "results.md").read_text()
