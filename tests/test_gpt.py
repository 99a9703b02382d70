"""The gpt model: built from a GPT2Config, logits [B, T, V], tied embeddings."""

from __future__ import annotations

import sys

import pytest
import torch

from admmprune.models import create_model

SMALL = dict(n_layer=2, n_embd=32, n_head=2, context=16)


def test_logits_shape_and_tied_head_counted_once():
    torch.manual_seed(0)
    model = create_model("gpt", **SMALL)
    x = torch.randint(256, (3, 16))
    assert model(x).shape == (3, 16, 256)
    assert model(x[:, :5]).shape == (3, 5, 256)  # shorter windows work too
    assert model.lm_head.weight is model.transformer.wte.weight
    unique = sum(p.numel() for p in model.parameters())
    named = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert named - unique == 256 * 32  # the head's matrix is the embedding's
    with pytest.raises(ValueError, match="n_positions 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_state_dict_is_hugging_faces_gpt2_lm_head_model():
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = create_model("gpt", **SMALL)
    hf = GPT2LMHeadModel(model.config)
    hf.load_state_dict(model.state_dict())
    hf.eval(), model.eval()
    x = torch.randint(256, (2, 16))
    assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-5)


def test_bad_sizes_and_missing_transformers_are_explained(monkeypatch):
    with pytest.raises(ValueError, match="multiple of n_head"):
        create_model("gpt", n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="shorter than context"):
        create_model("gpt", context=32, n_positions=16)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="install transformers"):
        create_model("gpt", **SMALL)


def test_onnx_export_matches_pytorch(tmp_path):
    from admmprune.export.formats import save_onnx

    torch.manual_seed(0)
    model = create_model("gpt", **SMALL).eval()
    result = save_onnx(model, tmp_path / "gpt.onnx", torch.randint(256, (2, 16)))
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] < 1e-4
