"""Hugging Face models: GPT-2's Conv1D is pruned like a Linear, the tied embedding / LM head
is one tensor left dense by default."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel  # the `transformers` extra (in `test`)
from transformers.pytorch_utils import Conv1D

from admmprune import ADMMPruner, PrunerError
from admmprune.selection import (
    describe_selection,
    format_selection,
    is_transposed_linear,
    prunable_parameters,
)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return GPT2LMHeadModel(config)


def conv1d_weights(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, Conv1D)]


def test_selection_module_does_not_import_transformers():
    import subprocess

    code = ("import sys, admmprune.selection, admmprune.pruner; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_default_selection_is_every_conv1d_and_no_embedding_or_head():
    model = tiny_gpt2()
    expected = conv1d_weights(model)
    assert len(expected) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 blocks
    assert all(is_transposed_linear(model.get_submodule(n.rpartition(".")[0]))
               for n in expected)
    assert [n for n, _ in prunable_parameters(model)] == expected
    pruned, skipped = describe_selection(model)
    why = {s.name: s.reason for s in skipped}
    assert "embedding" in why["transformer.wte.weight"]  # one tensor, named after wte
    assert "language-model head" in why["transformer.wte.weight"]
    assert "'lm_head' in include" in why["transformer.wte.weight"]
    assert "shared with transformer.wte.weight" in why["lm_head.weight"]
    assert "embedding: left dense by default" in why["transformer.wpe.weight"]
    text = format_selection(pruned, skipped)
    assert "left dense by default" in text and "transformer.h.0.attn.c_attn.weight" in text


def test_lm_head_named_in_include_is_pruned_once_with_its_tied_embedding():
    model = tiny_gpt2()
    chosen = prunable_parameters(model, include=["lm_head", "transformer.h.*"])
    names = [n for n, _ in chosen]
    assert names[0] == "transformer.wte.weight" and names.count("transformer.wte.weight") == 1
    assert "lm_head.weight" not in names  # the same Parameter, counted once
    pruner = ADMMPruner(model, all_percent=90.0, include=["lm_head", "transformer.h.*"])
    assert pruner.total == sum(p.numel() for _, p in chosen)
    assert model.lm_head.weight is model.transformer.wte.weight
    pruner.hard_prune()
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep


def test_ninety_percent_of_the_conv1d_weights_gives_exactly_k():
    model = tiny_gpt2()
    pruner = ADMMPruner(model, all_percent=90.0, rho=1e-2)
    assert pruner.names == conv1d_weights(model)
    pruner.admm_step()
    pruner.hard_prune()
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep
    assert pruner.keep == pruner.total - round(0.9 * pruner.total)
    assert int(model.transformer.wte.weight.count_nonzero()) == 64 * 32  # left dense
    tokens = torch.randint(0, 64, (2, 8))
    out = model(tokens, labels=tokens)
    out.loss.backward()
    for p, m in zip(pruner.params, pruner.masks, strict=True):
        assert not bool(p.grad[~m].any())


def test_two_four_groups_run_along_the_input_dimension_of_conv1d():
    model = tiny_gpt2(seed=1)
    pruner = ADMMPruner(model, all_percent=50.0, structure="nm", nm_n=2, nm_m=4)
    pruner.hard_prune()
    for name, w in zip(pruner.names, pruner.params, strict=True):
        module = model.get_submodule(name.rpartition(".")[0])
        assert w.shape == (module.nx, module.nf)  # [in, out]
        groups = (w.detach() != 0).reshape(module.nx // 4, 4, module.nf)
        # every output column keeps exactly 2 of every 4 consecutive inputs ...
        assert bool((groups.sum(1) == 2).all()), name
        # ... the two of largest magnitude (checked on the layer's input of output 0)
        column = model.get_submodule(name.rpartition(".")[0]).weight.detach()[:4, 0]
        assert int(column.count_nonzero()) == 2
    assert sum(int(p.count_nonzero()) for p in pruner.params) == pruner.keep \
        == pruner.total // 2


def test_nm_masks_keep_the_largest_inputs_of_each_group():
    model = tiny_gpt2(seed=2)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model)}
    pruner = ADMMPruner(model, all_percent=50.0, structure="nm")
    pruner.hard_prune()
    for name, mask in zip(pruner.names, pruner.masks, strict=True):
        w = before[name]  # [in, out]
        magnitude = w.abs().reshape(w.shape[0] // 4, 4, w.shape[1])
        top = magnitude.topk(2, dim=1).indices
        expected = torch.zeros_like(magnitude, dtype=torch.bool).scatter_(1, top, True)
        assert torch.equal(mask, expected.reshape(w.shape)), name


@pytest.mark.parametrize("structure", ["filter", "channel"])
def test_filter_and_channel_structures_refuse_conv1d_clearly(structure):
    with pytest.raises(PrunerError, match="transposed.*c_attn.*exclude them"):
        ADMMPruner(tiny_gpt2(), all_percent=50.0, structure=structure)
