"""Kept fractions grouped by transformer block and kind, on a tiny GPT."""

import pytest
import torch

from admmprune.models import create_model
from admmprune.runs.allocation import format_allocation, kept_by_group
from admmprune.selection import prunable_parameters


def test_gpt_groups_split_c_attn_into_q_k_v():
    model = create_model("gpt", n_layer=2, n_embd=8, n_head=2, context=8)
    named = prunable_parameters(model, ["*.c_attn", "*.c_proj", "*.c_fc"], [])
    masks = [torch.ones_like(p, dtype=torch.bool) for _, p in named]
    names = [n for n, _ in named]
    # block 1: prune all of k (the middle third of c_attn's columns), half of mlp in
    attn = names.index("transformer.h.1.attn.c_attn.weight")
    masks[attn][:, 8:16] = False
    fc = names.index("transformer.h.1.mlp.c_fc.weight")
    masks[fc][:4] = False
    groups = {(g.block, g.kind): g for g in kept_by_group(names, masks)}
    assert set(groups) == {(b, k) for b in (0, 1)
                           for k in ("q", "k", "v", "attn out", "mlp in", "mlp out")}
    assert groups[1, "k"].kept == 0 and groups[1, "k"].total == 64
    assert groups[1, "q"].fraction == groups[1, "v"].fraction == 1.0
    assert groups[1, "mlp in"].fraction == 0.5 and groups[0, "mlp in"].fraction == 1.0
    assert groups[0, "attn out"].total == 64 and groups[0, "mlp out"].total == 32 * 8
    table = format_allocation(list(groups.values()))
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["block", "q", "k", "v"]
    block1 = next(line for line in lines if line.split()[0] == "1")
    assert block1.split()[2] == "0.00%" and block1.split()[5] == "50.00%"
    assert lines[-1].split()[2] == "50.00%"  # k over both blocks


def test_other_names_and_bad_input():
    groups = kept_by_group(["layers.3.self_attn.q_proj.weight", "head.weight"],
                           [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])])
    assert [(g.block, g.kind, g.kept) for g in groups] == [(3, "q", 1), (None, "head", 0)]
    with pytest.raises(ValueError, match="c_attn"):
        kept_by_group(["h.0.attn.c_attn.weight"], [torch.ones(4, 4)])
    with pytest.raises(ValueError, match="names"):
        kept_by_group(["a.weight"], [])
