"""Registered models: the built-in ones (listed in :mod:`.builtin`) register on the first
lookup, a user's own with ``@register_model``."""

from .registry import (
    UnknownModelError,
    create_model,
    list_models,
    register_model,
    register_weights_loader,
    weights_loader,
    weights_loader_runs_code,
)

__all__ = ["create_model", "list_models", "register_model", "UnknownModelError",
           "register_weights_loader", "weights_loader", "weights_loader_runs_code"]
