"""Hugging Face model directories from the models built on Hugging Face configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmprune.export.huggingface import HuggingFaceExportError, save_huggingface
from admmprune.models import create_model

SMALL = {"gpt": dict(n_layer=1, n_embd=16, n_head=2, context=8),
         "llama": dict(n_layer=1, n_embd=16, n_head=2, n_kv_head=1, intermediate=24, context=8)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_directory_loads_with_from_pretrained_and_computes_the_same_logits(name, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = create_model(name, **SMALL[name]).eval()
    with torch.no_grad():  # a pruned model: zeros must travel as zeros
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.shape[0] < 256:
                module.weight[:, ::2] = 0
    out = save_huggingface(model, tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directory left
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(256, (2, 8))
    with torch.no_grad():
        assert torch.equal(hf(input_ids=x).logits, model(x))
    # and back into the registered model, as a recipe's pretrained: would
    from admmprune.runs.build import load_weights

    again = create_model(name, **SMALL[name]).eval()
    load_weights(again, out, torch.device("cpu"), name)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_models_without_a_hugging_face_config_and_existing_directories_are_refused(tmp_path):
    with pytest.raises(HuggingFaceExportError, match="no Hugging Face config"):
        save_huggingface(create_model("lenet5"), tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(HuggingFaceExportError, match="already exists"):
        save_huggingface(create_model("gpt", **SMALL["gpt"]), tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
