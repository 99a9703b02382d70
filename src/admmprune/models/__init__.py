"""Registered models; importing this package registers them all."""

from . import alexnet, darknet, gpt, lenet5, lenet300, mlp  # noqa: F401  (registration)
from .registry import (
    UnknownModelError,
    create_model,
    list_models,
    register_model,
    register_weights_loader,
    weights_loader,
)

__all__ = ["create_model", "list_models", "register_model", "UnknownModelError",
           "register_weights_loader", "weights_loader"]
