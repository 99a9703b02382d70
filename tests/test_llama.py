"""The llama model: built from a LlamaConfig, logits [B, T, V], Hugging Face's state dict."""

from __future__ import annotations

import sys

import pytest
import torch

from admmprune import ADMMPruner
from admmprune.models import create_model
from admmprune.selection import prunable_parameters

SMALL = dict(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, intermediate=48, context=16)


def test_logits_shape_grouped_query_attention_and_an_untied_head():
    torch.manual_seed(0)
    model = create_model("llama", **SMALL)
    x = torch.randint(256, (3, 16))
    assert model(x).shape == (3, 16, 256)
    assert model(x[:, :5]).shape == (3, 5, 256)
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (32, 32)
    assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (16, 32)  # 2 of 4
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    with pytest.raises(ValueError, match="context 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_state_dict_is_hugging_faces_llama_for_causal_lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = create_model("llama", **SMALL).eval()
    hf = LlamaForCausalLM(model.config).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    x = torch.randint(256, (2, 16))
    assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-5)


def test_the_blocks_linear_layers_are_pruned_the_embedding_and_head_are_not():
    model = create_model("llama", **SMALL)
    names = [name for name, _ in prunable_parameters(model)]
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert names == [f"model.layers.{i}.{p}.weight" for i in range(2) for p in per_block]
    pruner = ADMMPruner(model, all_percent=50.0)
    assert pruner.total == 2 * (32 * 32 * 2 + 16 * 32 * 2 + 3 * 32 * 48)


def test_bad_sizes_and_missing_transformers_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="multiple of n_head"):
        create_model("llama", n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        create_model("llama", n_head=4, n_kv_head=3)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="install transformers"):
        create_model("llama", **SMALL)
