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


def _saved_gpt2(model_config, path, **changes):
    """A GPT2LMHeadModel of ``model_config`` with ``changes`` saved as a Hugging Face model
    directory (config.json and model.safetensors)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    hf = GPT2LMHeadModel(GPT2Config(**{**model_config.to_dict(), **changes})).eval()
    hf.save_pretrained(path)
    return hf


def test_a_hugging_face_directory_of_another_function_is_refused(tmp_path):
    from admmprune.runs.build import load_weights
    from admmprune.runs.rundir import RunError

    cpu = torch.device("cpu")
    model = create_model("gpt", **SMALL).eval()
    _saved_gpt2(model.config, tmp_path / "relu", activation_function="relu",
                layer_norm_epsilon=0.5)
    with pytest.raises(RunError, match=r"relu.*config.json.*activation_function: saved 'relu', "
                                       r"here 'gelu_new'; layer_norm_epsilon: saved 0.5, here "
                                       r"1e-05"):
        load_weights(model, tmp_path / "relu", cpu, "gpt")
    # a key nothing here knows is refused too (only known harmless keys pass)
    _saved_gpt2(model.config, tmp_path / "new", scale_attn_by_inverse_layer_idx=True,
                some_future_switch=3)
    with pytest.raises(RunError, match=r"scale_attn_by_inverse_layer_idx.*some_future_switch: "
                                       r"saved 3, here None"):
        load_weights(model, tmp_path / "new", cpu, "gpt")
    # names, generation defaults and training-time dropout leave the function as it is
    hf = _saved_gpt2(model.config, tmp_path / "same", bos_token_id=50, eos_token_id=50,
                     use_cache=True, resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1,
                     n_ctx=16, task_specific_params={"text-generation": {"max_length": 50}})
    load_weights(model, tmp_path / "same", cpu, "gpt")
    x = torch.randint(256, (2, 16))
    assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-5)
