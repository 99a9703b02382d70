"""Importing this module registers every built-in model: add a new model's module here."""

from . import alexnet, darknet, gpt, lenet5, lenet300, llama, mlp  # noqa: F401
