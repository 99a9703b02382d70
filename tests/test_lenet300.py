"""LeNet-300-100: its size, its forward pass, and a pruning run through the pipeline on a
small slice of real MNIST."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO

from admmprune import create_model, list_models, prunable_parameters
from admmprune.runs.config import load_config
from admmprune.runs.pipeline import run_pipeline

WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10  # 266,200
BIASES = 300 + 100 + 10


def test_lenet300_is_registered_with_266610_parameters_of_which_266200_weights():
    assert "lenet300" in list_models()
    model = create_model("lenet300")
    assert WEIGHTS == 266_200 and WEIGHTS + BIASES == 266_610
    assert sum(p.numel() for p in model.parameters()) == 266_610
    named = prunable_parameters(model)
    assert [n for n, _ in named] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert [tuple(w.shape) for _, w in named] == [(300, 784), (100, 300), (10, 100)]
    assert sum(w.numel() for _, w in named) == 266_200


def test_forward_on_mnist_shaped_input_is_relu_mlp():
    torch.manual_seed(0)
    model = create_model("lenet300")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        flat = x.flatten(1)
        expected = model.fc3(torch.relu(model.fc2(torch.relu(model.fc1(flat)))))
    assert out.shape == (5, 10)
    assert torch.equal(out, expected)
    # a flattened batch is the same input
    with torch.no_grad():
        assert torch.equal(model(flat), out)


def test_num_classes_and_input_size():
    model = create_model("lenet300", num_classes=7, input_size=3 * 32 * 32)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(TypeError):
        create_model("lenet300", depth=3)


def test_lenet300_prunes_through_the_pipeline_on_real_mnist(tmp_path, mnist_dir):
    config = load_config(None, {
        "model": "lenet300", "dataset": "mnist", "data_dir": str(mnist_dir),
        "train_subset": 512, "test_subset": 256, "batch_size": 64, "dense_epochs": 1,
        "all_percent": 98.53, "k_step": 2, "retraining_epochs": 1, "progress": False,
        "threads": 1})
    summary = run_pipeline(config, run_dir=tmp_path / "run")
    kept = WEIGHTS - round(0.9853 * WEIGHTS)
    assert summary["total"] == WEIGHTS and summary["kept"] == kept
    assert summary["complete"]
    assert {r["name"] for r in summary["layers"]} == {"fc1.weight", "fc2.weight",
                                                        "fc3.weight"}
    weights = torch.load(tmp_path / "run" / "model.pt")
    assert sum(int(weights[f"fc{i}.weight"].count_nonzero()) for i in (1, 2, 3)) == kept
    # the dense model learned something from 512 images, and the summary is on disk
    assert summary["dense_accuracy"] > 0.5
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["kept"] == kept


def test_the_recipe_loads_and_removes_98_53_percent():
    config = load_config(REPO / "recipes" / "lenet300.yaml")
    assert config.model == "lenet300" and config.dataset == "mnist"
    assert config.final_percent() == 98.53
    kept = WEIGHTS - round(0.9853 * WEIGHTS)
    assert WEIGHTS / kept == pytest.approx(68.0, abs=0.05)
