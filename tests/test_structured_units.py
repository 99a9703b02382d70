"""Post-training structured pruning of transformers: MLP neurons and attention groups removed
under one global ratio, the model shrunk, saved, reloaded and exported."""

from __future__ import annotations

import json

import pytest
import torch

import admmprune
from admmprune.export.huggingface import load_huggingface, save_causal_lm_onnx, save_huggingface
from admmprune.posttraining import OneShotError, find_blocks
from admmprune.posttraining.structured import prune_units, unit_scores
from admmprune.posttraining.units import block_units, cut_block
from admmprune.selection import is_transposed_linear

transformers = pytest.importorskip("transformers")


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=32)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def calibration(batches: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(64, (4, 16), generator=generator) for _ in range(batches)]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_units_without_contribution_are_cut_without_changing_the_outputs(build):
    # zero the down/output projection's columns of some neurons and one group: they add
    # nothing to the residual stream, so cutting them (no refit) leaves the logits as they are
    model = build()
    units = block_units(find_blocks(model))
    u = units[0]
    with torch.no_grad():
        dead_neurons = torch.tensor([1, 5, 7])
        dead_group = torch.tensor([1])
        for module, columns in ((u.mlp_out, dead_neurons),
                                (u.o_proj, u.group_columns(dead_group))):
            if is_transposed_linear(module):
                module.weight[columns, :] = 0  # Conv1D: [in, out]
            else:
                module.weight[:, columns] = 0
    ids = torch.randint(64, (2, 10))
    want = model(ids).logits
    keep_neurons = torch.tensor([i for i in range(u.neurons) if i not in dead_neurons])
    keep_groups = torch.tensor([g for g in range(u.groups) if g not in dead_group])
    cut_block(u, keep_neurons, keep_groups)
    assert (u.neurons, u.groups) == (len(keep_neurons), len(keep_groups))
    torch.testing.assert_close(model(ids).logits, want, atol=1e-5, rtol=1e-5)
    # and the KV cache still works on the narrower attention
    out = model(ids[:, :9], use_cache=True)
    step = model(ids[:, 9:], use_cache=True, cache=out.cache).logits
    torch.testing.assert_close(step[:, -1], want[:, -1], atol=1e-4, rtol=1e-4)


def test_a_grouped_query_group_takes_its_query_heads_along():
    model = tiny_llama()
    u = block_units(find_blocks(model))[0]
    assert (u.groups, u.heads_per_group, u.head_dim) == (2, 2, 8)
    cut_block(u, torch.arange(u.neurons), torch.tensor([1]))
    attention = u.attention
    # 2 of 4 query heads (rows 16-31), 1 of 2 key/value heads (rows 8-15)
    assert attention.q_proj.weight.shape == (16, 32)
    assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (8, 32)
    assert attention.o_proj.weight.shape == (32, 16)
    model(torch.randint(64, (1, 5)))  # runs


def test_scores_compare_blocks_by_what_units_add_to_the_residual_stream():
    model = tiny_llama()
    batches = calibration()
    units = block_units(find_blocks(model))
    from admmprune.posttraining.structured import _grams

    grams = _grams(model, units, batches)
    neurons, groups = unit_scores(units[0], *grams[0])
    # a neuron's score is E[a²]·‖column‖²: doubling its down column quadruples it
    with torch.no_grad():
        units[0].mlp_out.weight[:, 3] *= 2
    doubled, _ = unit_scores(units[0], *grams[0])
    torch.testing.assert_close(doubled[3], 4 * neurons[3])
    assert torch.equal(doubled[:3], neurons[:3])
    assert groups.shape == (2,) and (groups > 0).all()


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_the_budget_is_met_and_every_block_keeps_a_unit_of_each_kind(build, allocation):
    model = build()
    total = sum(u.total_weights() for u in block_units(find_blocks(model)))
    result = prune_units(model, calibration(), percent=60, allocation=allocation)
    assert result.total == total
    removed = 1 - result.kept / total
    assert removed >= 0.55  # uniform floors per layer; global stops at the first unit past 60%
    for block in result.blocks:
        assert block["neurons_after"] >= 1 and block["groups_after"] >= 1
    widths = {b["name"]: (b["neurons_after"], b["groups_after"]) for b in result.blocks}
    if allocation == "uniform":
        assert len(set(widths.values())) == 1
    assert model.config.admmprune_widths == result.widths()
    model(torch.randint(64, (2, 8)))


def test_the_least_squares_refit_lowers_the_calibration_error():
    batches = calibration()
    dense = tiny_llama()
    want = torch.cat([dense(b).logits for b in batches])
    errors = {}
    for reconstruct in (False, True):
        model = tiny_llama()
        prune_units(model, batches, percent=40, reconstruct=reconstruct)
        got = torch.cat([model(b).logits for b in batches])
        errors[reconstruct] = float(((got - want) ** 2).mean())
    assert errors[True] < errors[False]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_a_shrunk_model_saves_reloads_and_exports_to_onnx(build, tmp_path):
    pytest.importorskip("onnxruntime")
    model = build()
    prune_units(model, calibration(), percent=50)
    ids = torch.randint(64, (2, 12))
    want = model(ids).logits
    out = save_huggingface(model, tmp_path / "shrunk")
    assert "admmprune_widths" in json.loads((out / "config.json").read_text())
    back = load_huggingface(out)
    assert admmprune.load_huggingface is load_huggingface
    torch.testing.assert_close(back(ids).logits, want)
    checked = save_causal_lm_onnx(back, tmp_path / "shrunk.onnx", ids)
    assert checked["max_abs_diff"] < 1e-4


def test_bad_requests_are_refused_with_the_reason():
    with pytest.raises(OneShotError, match="percent"):
        prune_units(tiny_llama(), calibration(), percent=100)
    with pytest.raises(OneShotError, match="allocation"):
        prune_units(tiny_llama(), calibration(), percent=50, allocation="owl")
    with pytest.raises(OneShotError, match="no calibration batch"):
        prune_units(tiny_llama(), [], percent=50)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 3))
    with pytest.raises(OneShotError, match="Llama-style blocks"):
        prune_units(conv, calibration(), percent=50, blocks=[("0", conv[0])])


def test_recovery_keeps_pruned_weights_zero_and_lowers_the_loss():
    from admmprune.posttraining.recovery import recover

    model = tiny_llama()
    layer = model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    zeros = layer.weight == 0
    batches = calibration(8)
    losses = recover(model, batches * 3, learning_rate=3e-3, progress=False,
                     masked=["model.layers.0.mlp.down_proj.weight"])
    assert len(losses) == 24 and losses[-1] < losses[0]
    assert (layer.weight[zeros] == 0).all()
    assert (layer.weight[~zeros] != 0).all()
    assert not model.training


def test_a_diverging_recovery_is_refused_and_undone():
    from admmprune.posttraining.recovery import recover

    model = tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(OneShotError, match="lower the learning rate"):
        recover(model, calibration(4), learning_rate=1e30, progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    with pytest.raises(OneShotError, match="unknown parameters"):
        recover(model, calibration(1), masked=["nope"], progress=False)
    model.requires_grad_(False)
    with pytest.raises(OneShotError, match="nothing to train"):
        recover(model, calibration(1), progress=False)
