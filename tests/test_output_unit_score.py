"""The ``output`` unit score (group_score 'output', structure 'units'): each MLP neuron and
attention group ranked by the mean squared norm of what it adds to the residual stream, read
from the model, in the Z-step and the hard prune as in post-training structured pruning."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from admmprune import ADMMPruner
from admmprune.cli import main
from admmprune.export.huggingface import load_huggingface
from admmprune.posttraining.blocks import find_blocks
from admmprune.posttraining.structured import prune_units, unit_scores
from admmprune.posttraining.units import block_units, unit_families
from admmprune.pruner import PrunerError
from admmprune.runs.config import ConfigError, load_config
from admmprune.runs.pipeline import run_pipeline
from admmprune.unit_contribution import (
    UnitInputs,
    output_contributions,
    output_unit_scores,
    read_unit_inputs,
    unit_blocks,
)

transformers = pytest.importorskip("transformers")


def block_weights(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.dim() == 2 and (
        ".layers." in n or ".h." in n) and "norm" not in n and "ln_" not in n]


def test_the_contribution_is_the_mean_squared_norm_of_each_units_output():
    torch.manual_seed(0)
    weight = torch.randn(5, 6, dtype=torch.float64)  # [out, in]
    inputs = torch.randn(40, 6, dtype=torch.float64)
    index = torch.tensor([[0, 3], [1, 2], [4, 5]])  # three units of two input columns each
    direct = torch.stack([(inputs[:, i] @ weight[:, i].t()).square().sum(1).mean()
                          for i in index])
    columns = weight.t()[index.reshape(-1)].reshape(3, 2, -1)
    from_gram = output_contributions(columns, unit_blocks(inputs.t() @ inputs, index), 40)
    torch.testing.assert_close(from_gram, direct)
    # the blocks summed batch by batch are the full Gram matrix's blocks
    stats = UnitInputs(index)
    stats.add(inputs[:25].reshape(5, 5, 6))
    stats.add(inputs[25:])
    assert stats.tokens == 40
    torch.testing.assert_close(stats.blocks, unit_blocks(inputs.t() @ inputs, index))


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_the_pruners_score_is_post_trainings_per_weight(build):
    """One rule: the Z-step's output score of the model's own weights is the post-training
    unit score divided by the unit's size."""
    model = build()
    names = block_weights(model)
    families = unit_families(model, names)
    params = [model.get_parameter(n) for n in names]
    tokens = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    projections = [model.get_submodule(names[f.output[0]].rpartition(".")[0])
                   for f in families]
    inputs = read_unit_inputs(model, projections, [f.output[2] for f in families], tokens)
    ours = output_unit_scores(params, families, inputs)

    units = block_units(find_blocks(model))
    from admmprune.posttraining.structured import _grams

    for b, (mlp, attention) in enumerate(_grams(model, units, [tokens])):
        neurons, groups = unit_scores(units[b], mlp, attention)
        for family, score in ((families[2 * b], neurons), (families[2 * b + 1], groups)):
            torch.testing.assert_close(ours[families.index(family)].float(),
                                       score / family.unit_size(params), rtol=1e-5, atol=0)


def test_a_neuron_that_never_fires_goes_first_whatever_its_weights():
    """By weights alone (l2) the neuron with the largest gate row and down column would be
    kept first; its up row is zero, so it adds nothing to the residual stream and the
    output score removes it before any other."""
    model = tiny_llama()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[7] *= 50
        mlp.down_proj.weight[:, 7] *= 50
        mlp.up_proj.weight[7] = 0
    tokens = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(2))
    names = block_weights(model)
    kept = {}
    for score in ("l2", "output"):
        pruner = ADMMPruner(model, all_percent=5.0, include=names, structure="units",
                            group_score=score, example_inputs=tokens)
        masks = pruner._project([p.detach() for p in pruner.params])
        down = pruner.names.index("model.layers.0.mlp.down_proj.weight")
        kept[score] = bool(masks[down][:, 7].any())
    assert kept == {"l2": True, "output": False}


def test_the_output_score_needs_units_and_inputs_and_reports_a_failing_forward():
    model = tiny_gpt2()
    names = block_weights(model)
    tokens = torch.randint(0, 64, (2, 8))
    with pytest.raises(PrunerError, match="structure 'units' and example_inputs"):
        ADMMPruner(model, 50.0, include=names, structure="units", group_score="output")
    with pytest.raises(PrunerError, match="structure 'units' and example_inputs"):
        ADMMPruner(model, 50.0, include=names, group_score="output", example_inputs=tokens)
    with pytest.raises(PrunerError, match="forward pass over example_inputs, and it failed"):
        ADMMPruner(model, 50.0, include=names, structure="units", group_score="output",
                   example_inputs=torch.randn(2, 8))  # floats are not token ids
    with pytest.raises(ConfigError, match="group_score 'output'.*structure units"):
        load_config(None, {"model": "gpt", "dataset": "text", "group_score": "output"})


def test_a_units_run_ranked_by_output_prunes_whole_units_and_shrinks(code_corpus, tmp_path,
                                                                     capsys):
    config = load_config(None, dict(
        model="gpt", model_args={"n_layer": 2, "n_embd": 32, "n_head": 2, "context": 16},
        dataset="text", task="language-modeling", data_dir=str(code_corpus), train_subset=96,
        test_subset=32, batch_size=16, dense_epochs=1, all_percent=50.0, k_step=2, rho=1e-2,
        retraining_epochs=1, progress=False, seed=1, threads=1, structure="units",
        group_score="output"))
    run_dir = tmp_path / "run"
    summary = run_pipeline(config, run_dir=run_dir)
    largest_unit = 4 * 32 * 16  # an attention group: 16 rows of q, k, v and 16 columns of o
    assert summary["total"] // 2 <= summary["kept"] < summary["total"] // 2 + largest_unit
    assert main(["shrink", str(run_dir)]) == 0
    small = load_huggingface(run_dir / "model-shrunk")
    assert sum(p.numel() for n, p in small.named_parameters() if ".h." in n and "ln_" not in n
               and n.endswith("weight")) == summary["kept"]


def test_post_training_structured_pruning_is_unchanged_by_the_shared_rule():
    """prune_units still removes the lowest-contribution units first (through the shared
    contribution function)."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, :10] = 0  # 10 neurons adding nothing
    tokens = [torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    result = prune_units(model, tokens, percent=5.0, reconstruct=False)
    # 5% of the 15,360 unit weights is 8 neurons of 96 weights: all from the silent ten
    assert [b["neurons_after"] for b in result.blocks] == [48, 40]
