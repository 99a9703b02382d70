"""The model registry and the registered models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import admmprune
from admmprune import ADMMPruner, create_model, list_models, prunable_parameters
from admmprune.models import UnknownModelError

# Input shape (without the batch) of models that do not take MNIST-sized images.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"alexnet": (3, 67, 67), "yolov4": (3, 64, 64),
                                            "yolov4-tiny": (3, 64, 64)}
MNIST_SHAPE = (1, 28, 28)
# Factory arguments that give 10 classes and keep big models small in this test.
MODEL_ARGS: dict[str, dict] = {"alexnet": {"num_classes": 10, "image_size": 67, "fc_width": 64},
                               "yolov4": {"num_classes": 10, "image_size": 64},
                               "yolov4-tiny": {"num_classes": 10, "image_size": 64}}
# Detectors return one raw head per scale: (B, anchors * (5 + classes), H, W).
DETECTORS = {"yolov4", "yolov4-tiny"}
# Token windows in, logits [B, T, V] out: tested in test_gpt.py and test_llama.py.
LANGUAGE_MODELS = {"gpt", "llama"}


def test_the_documented_models_are_registered():
    assert {"lenet5", "mlp"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(set(list_models()) - LANGUAGE_MODELS))
def test_every_model_gives_batch_by_10_outputs_and_has_prunable_tensors(name):
    torch.manual_seed(0)
    model = create_model(name, **MODEL_ARGS.get(name, {}))
    assert isinstance(model, nn.Module)
    x = torch.randn(3, *INPUT_SHAPES.get(name, MNIST_SHAPE))
    with torch.no_grad():
        output = model(x)
    if name in DETECTORS:
        assert [tuple(h.shape[:2]) for h in output] == [(3, 3 * (5 + 10))] * len(output)
        assert all(bool(torch.isfinite(h).all()) for h in output)
    else:
        assert output.shape == (3, 10)
        assert bool(torch.isfinite(output).all())
    named = prunable_parameters(model)
    assert named
    for tensor_name, weight in named:
        assert tensor_name.endswith(".weight")
        assert weight.dim() >= 2
    pruner = ADMMPruner(model, all_percent=90.0)
    assert pruner.total == sum(w.numel() for _, w in named)


def test_lenet5_has_exactly_431080_parameters():
    model = create_model("lenet5")
    assert sum(p.numel() for p in model.parameters()) == 431_080
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["conv1.weight"] == (20, 1, 5, 5)
    assert shapes["conv2.weight"] == (50, 20, 5, 5)
    assert shapes["fc1.weight"] == (500, 800)
    assert shapes["fc2.weight"] == (10, 500)


def test_lenet5_options():
    model = create_model("lenet5", num_classes=7, in_channels=3)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_mlp_depth_gives_depth_plus_one_linear_layers(depth):
    model = create_model("mlp", depth=depth, width=32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == depth + 1
    assert linears[0].in_features == 784
    assert linears[-1].out_features == 10
    assert all(layer.out_features == 32 for layer in linears[:-1])
    assert len(prunable_parameters(model)) == depth + 1
    with torch.no_grad():
        assert model(torch.randn(4, 784)).shape == (4, 10)
        assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_mlp_parameter_count():
    model = create_model("mlp", depth=2, width=32)
    expected = (784 * 32 + 32) + (32 * 32 + 32) + (32 * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("kwargs", [{"depth": -1}, {"width": 0}])
def test_mlp_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="depth >= 0 and width >= 1"):
        create_model("mlp", **kwargs)


def test_unknown_model_name_lists_the_available_models():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "unknown model 'resnet9000'" in message
    for name in list_models():
        assert name in message
    assert isinstance(info.value, KeyError)


def test_unknown_keyword_argument_raises_type_error():
    with pytest.raises(TypeError):
        create_model("lenet5", depth=3)


def test_a_model_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        admmprune.register_model("lenet5")(lambda: nn.Linear(1, 1))
    assert "lenet5" in list_models()
