"""A small model registry: ``create_model(name, **kwargs)`` and ``list_models()``.

``name`` may also be an import spec, ``"package.module:factory"`` (see
:mod:`admmprune.imports`): the factory is imported and called with the keyword arguments.

Models whose published weights come in a foreign format (Caffe's ``bvlc_alexnet.npy``,
darknet's ``.weights``) register a loader for that file suffix with
:func:`register_weights_loader`; ``pretrained:`` files with any other suffix are read as a
PyTorch state dict.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..imports import (
    ImportSpecError,
    duplicate_name,
    is_builtin,
    is_object_label,
    is_spec,
    resolve_spec,
)

__all__ = ["register_model", "create_model", "model_factory", "list_models", "UnknownModelError",
           "ModelArgumentsError", "register_weights_loader", "weights_loader",
           "weights_loader_runs_code"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# (model name, lower-case suffix such as ".npy") -> loader(model, path) filling the model in place
WeightsLoader = Callable[[nn.Module, Path], None]
_WEIGHTS_LOADERS: dict[tuple[str, str], WeightsLoader] = {}
# the keys of loaders that unpickle (a crafted file runs code): only for files one trusts
_RUNS_CODE: set[tuple[str, str]] = set()


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class ModelArgumentsError(TypeError):
    """The keyword arguments do not fit the factory's signature (an unknown or a missing
    argument), as opposed to an error raised while the factory runs."""


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model factory available to ``create_model`` under ``name``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not is_builtin(factory):
            _load_builtin()  # a clash with a built-in name fails now (see duplicate_name)
        if name in _REGISTRY:
            raise duplicate_name("model", name, _REGISTRY[name])
        _REGISTRY[name] = factory
        return factory

    return decorator


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory of a registered model or of an import spec.

    Raises:
        UnknownModelError: no model of that name is registered.
        ImportSpecError: ``name`` is a spec that cannot be imported.
    """
    if is_spec(name):
        return resolve_spec(name, "model factory")
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        if is_object_label(name):
            raise UnknownModelError(
                f"model {name} was a module handed to run_pipeline(model=...) from Python; "
                "pass the same module again (the command line cannot rebuild it)") from None
        raise UnknownModelError(
            f"unknown model {name!r}; available: {', '.join(list_models())} (or an import "
            "spec \"package.module:factory\", or --import FILE.py that registers it)"
        ) from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model (or call the factory an import spec names); keyword
    arguments its signature does not take raise ``ModelArgumentsError`` (a ``TypeError``)
    before it runs, a spec factory returning no ``nn.Module`` ``ImportSpecError``; what the
    factory itself raises propagates."""
    factory = model_factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            accepted = ", ".join(signature.parameters) or "none"
            raise ModelArgumentsError(f"{err} (its parameters: {accepted})") from None
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ImportSpecError(f"model {name!r} returned a {type(model).__name__}, not a "
                              "torch.nn.Module")
    return model


def accepts_argument(name: str, argument: str) -> bool:
    """Does model ``name``'s factory take keyword ``argument`` (e.g. num_classes)?"""
    try:
        factory = model_factory(name)
    except (UnknownModelError, ImportSpecError):
        return False
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return False
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def list_models() -> list[str]:
    """The names of every registered model, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def register_weights_loader(model_name: str, suffix: str, *, runs_code: bool = False
                            ) -> Callable[[WeightsLoader], WeightsLoader]:
    """Decorator: ``loader(model, path)`` reads ``model_name``'s weights from files ending in
    ``suffix`` (e.g. ``".npy"``); it raises ``ValueError`` with a clear message on a bad file.

    ``runs_code=True`` marks a loader that unpickles (``np.load(allow_pickle=True)``,
    ``torch.load(weights_only=False)``): a crafted file can run code, so the command line
    uses it only for a recipe's ``pretrained:`` or behind ``--trust-pickle``."""

    def decorator(loader: WeightsLoader) -> WeightsLoader:
        key = (model_name, suffix.lower())
        if key in _WEIGHTS_LOADERS:
            raise ValueError(f"a {suffix} loader for model {model_name!r} is registered twice")
        _WEIGHTS_LOADERS[key] = loader
        if runs_code:
            _RUNS_CODE.add(key)
        return loader

    return decorator


def weights_loader(model_name: str, path: str | Path) -> WeightsLoader | None:
    """The registered loader for ``path``'s suffix and this model, or None (a state dict)."""
    if is_spec(model_name):
        return None
    _load_builtin()
    return _WEIGHTS_LOADERS.get((model_name, Path(path).suffix.lower()))


def weights_loader_runs_code(model_name: str, path: str | Path) -> bool:
    """Whether the loader registered for ``path``'s suffix and this model unpickles."""
    _load_builtin()
    return (model_name, Path(path).suffix.lower()) in _RUNS_CODE


def _load_builtin() -> None:
    # Registration is an import side effect of the model modules.
    from . import builtin  # noqa: F401
