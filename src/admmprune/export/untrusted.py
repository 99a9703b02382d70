"""Building the model a file records without letting the file choose its size or its code.

A model file (``.apz``, safetensors from ``admmprune export`` or ``admmprune shrink``) names a
registered model, or an import spec (``"module:factory"``), and the arguments to build it
with. Those are data from whoever wrote the file: ``mlp(width=40000)`` is 1.6 billion
parameters, and a spec names code (``"os:system"`` is one). :func:`build_recorded` builds a
spec only from a module the caller allows (``allow_modules``), so a file can neither import a
module nor call a function the caller did not name. It first builds the model on PyTorch's
``meta`` device (shapes only, no memory), counting every parameter and buffer as it is
registered and stopping as soon as the count passes the caller's limit; only a model within
the limit is then built for real.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

__all__ = ["DEFAULT_MAX_PARAMS", "MAX_OBJECTS", "PARAMS_PER_OBJECT", "ModelLimitError",
           "ModuleNotAllowedError", "check_record", "object_limit", "build_recorded"]

# 2**28 elements: 1 GiB of float32, four times the largest registered model (YOLOv4, 64M)
DEFAULT_MAX_PARAMS = 1 << 28
# registrations of submodules, parameters and buffers: registered models make fewer than
# 2,000 (YOLOv4); this bounds a blow-up in depth of tiny layers (each costs ~0.1 ms on meta).
# The limit is max(MAX_OBJECTS, max_params // PARAMS_PER_OBJECT): raising max_params raises it.
MAX_OBJECTS = 20_000
PARAMS_PER_OBJECT = 100_000


class ModelLimitError(ValueError):
    """The recorded model is larger than the caller allows."""


class ModuleNotAllowedError(ValueError):
    """The file records an import spec whose module the caller did not allow."""


class _Over(Exception):
    """Raised from inside a registration hook to stop a build (not a ValueError, so a
    factory's own ``except ValueError`` does not swallow it)."""


def check_record(name: Any, args: Any, allow_modules: Collection[str] = (), *,
                 loader: str = "admmprune.load") -> tuple[str, dict[str, Any]]:
    """``(name, args)`` of a recorded model once their types are right and the model may be
    built: a registered name, or an import spec whose module is in ``allow_modules``.

    Args:
        name: the registered model's name or the import spec, from the file.
        args: its keyword arguments from the file (None for none).
        allow_modules: the modules (``"pkg.mod"``, exactly as the spec names them) whose
            factories the caller lets the file build; nothing else is imported or called.
        loader: the function the message tells to call with ``allow_modules``.

    Returns:
        The name and a plain dict of arguments.

    Raises:
        ModuleNotAllowedError: an import spec of a module not in ``allow_modules``.
        ValueError: the name is not a string naming a registered model or a spec, or the
            arguments are not a mapping of names to values.
    """
    from ..imports import is_spec, parse_spec
    from ..models import list_models

    if not isinstance(name, str):
        raise ValueError(f"the recorded model name must be a string, got {type(name).__name__}")
    if is_spec(name):
        module = parse_spec(name)[0]
        if module not in allow_modules:
            # checked before anything is imported: the file names code, the caller chooses
            call = loader.rsplit(".", 1)[-1]
            raise ModuleNotAllowedError(
                f"records the model {name!r}, an import spec: building it imports and runs "
                f"module {module!r}, which {call}() does only for a module you allow: "
                f"{call}(path, allow_modules=[{module!r}]) if that module is yours")
    elif name not in list_models():
        raise ValueError(f"the recorded model {name[:100]!r} is not registered (available: "
                         f"{', '.join(list_models())})")
    if args is None:
        args = {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) for k in args):
        raise ValueError(f"the recorded model arguments must be an object of name: value, got "
                         f"{type(args).__name__}")
    return name, dict(args)


def object_limit(max_params: int) -> int:
    """The most submodules, parameters and buffers a recorded model may register."""
    return max(MAX_OBJECTS, max_params // PARAMS_PER_OBJECT)


@contextlib.contextmanager
def _counting(max_params: int) -> Iterator[list[int]]:
    """Counts [tensor elements, registrations] of submodules, parameters and buffers made
    meanwhile (any module, any thread); raises :class:`_Over` once either passes its
    limit."""
    count = [0, 0]
    max_objects = object_limit(max_params)

    def tensor(_module, _name, value):
        count[0] += 0 if value is None else value.numel()
        count[1] += 1
        if count[0] > max_params or count[1] > max_objects:
            raise _Over
        return None

    def submodule(_module, _name, _submodule):
        count[1] += 1
        if count[1] > max_objects:
            raise _Over
        return None

    handles = [torch_module.register_module_parameter_registration_hook(tensor),
               torch_module.register_module_buffer_registration_hook(tensor),
               torch_module.register_module_module_registration_hook(submodule)]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def _too_big(name: str, args: dict, max_params: int, count: list[int],
             loader: str) -> ModelLimitError:
    what = (f"more than {object_limit(max_params):,} submodules, parameters and buffers"
            if count[1] > object_limit(max_params)
            else f"more than {max_params:,} parameters and buffers (the limit max_params)")
    shown = repr(args) if len(repr(args)) <= 200 else repr(args)[:200] + "..."
    return ModelLimitError(
        f"the file records model {name!r} with arguments {shown}, which has {what}; it was "
        f"not built. If you trust the file, pass a larger max_params: {loader}(path, "
        "max_params=...)")


def build_recorded(name: Any, args: Any, max_params: int = DEFAULT_MAX_PARAMS, *,
                   loader: str = "admmprune.load",
                   allow_modules: Collection[str] = ()) -> nn.Module:
    """The model ``name`` (registered, or an import spec of a module in ``allow_modules``)
    built with ``args``, if it is within ``max_params``.

    Args:
        name: registered model name or import spec (from a file).
        args: keyword arguments (from a file).
        max_params: the most parameter and buffer elements the model may have.
        loader: the function the error messages tell to call with a larger limit or with
            ``allow_modules``.
        allow_modules: the modules whose factories a spec may name (see
            :func:`check_record`).

    Returns:
        The model, on the CPU.

    Raises:
        ModelLimitError: the model exceeds ``max_params`` elements or
            :func:`object_limit` registrations.
        ModuleNotAllowedError: a spec of a module the caller did not allow.
        ValueError: bad name or arguments, or the factory refuses the arguments.
    """
    from ..models import create_model

    name, args = check_record(name, args, allow_modules, loader=loader)
    if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 0:
        raise ValueError(f"max_params must be a whole number >= 0, got {max_params!r}")
    for device in ("meta", "cpu"):  # on the CPU only once the meta build fits
        try:
            with _counting(max_params) as count, torch.device(device):
                model = create_model(name, **args)
        except _Over:
            raise _too_big(name, args, max_params, count, loader) from None
        except Exception as err:  # noqa: BLE001 - a factory given bad arguments raises anything
            if device == "meta" and not isinstance(err, (TypeError, ValueError)):
                continue  # a factory that computes on its tensors: count on the CPU instead
            raise ValueError(f"cannot build the recorded model {name!r} from arguments "
                             f"{args!r}: {err}") from None
    return model
