"""Importing this module registers every built-in model: add a new model's module here."""

from . import (  # noqa: F401
    alexnet,
    darknet,
    gpt,
    lenet5,
    lenet300,
    llama,
    mlp,
    mobilenet_bn,
    resnet_bn,
)
