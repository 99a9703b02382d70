"""The calibration inputs of a block: captured once at the first block, then replaced by each
pruned block's outputs on their way down the model.

The first block's inputs are caught by a forward pre-hook (positional arguments and keyword
arguments: Hugging Face Llama passes ``position_embeddings``, ``attention_mask``,
``position_ids``... as keywords, GPT-2 its mask positionally) that stops the forward pass
there, so nothing after the embeddings runs. Key/value caches are dropped (set to None) and
``use_cache`` is set False: a block run on cached inputs must not grow a cache between runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch import nn

from .errors import BlockError

__all__ = ["BlockInput", "capture_block_inputs", "run_block", "block_output", "call_model",
           "model_input", "no_cache"]


@dataclass
class BlockInput:
    """What one calibration batch passes to a block: ``block(*args, **kwargs)``. The hidden
    state is the first positional argument, or the keyword ``hidden_states``."""

    args: tuple
    kwargs: dict[str, Any]

    @property
    def hidden(self) -> torch.Tensor:
        value = self.args[0] if self.args else self.kwargs.get("hidden_states")
        if not isinstance(value, torch.Tensor):
            raise BlockError("a block's hidden state must be its first positional argument or "
                             f"its keyword 'hidden_states' (a tensor), got {type(value).__name__}")
        return value

    def with_hidden(self, hidden: torch.Tensor) -> BlockInput:
        """The same call with ``hidden`` in place of the hidden state (other inputs shared)."""
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden})


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass at the first block."""


def _is_cache(value: Any) -> bool:
    # transformers' Cache classes, recognised by name: transformers need not be installed
    return any(cls.__name__ == "Cache" for cls in type(value).__mro__)


def _detached(value: Any, device: torch.device | str | None) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach() if device is None else value.detach().to(device)
    if _is_cache(value):
        return None
    if isinstance(value, tuple):
        return tuple(_detached(v, device) for v in value)
    if isinstance(value, list):
        return [_detached(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v, device) for k, v in value.items()}
    return value


def model_input(batch: Any) -> Any:
    """Token tensor ``[B, T]``, the ``x`` of an ``(x, y)`` pair, or a dict of model inputs."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise BlockError("an empty calibration batch")
        return batch[0]
    return batch


def call_model(model: nn.Module, x: Any, device: torch.device | str) -> None:
    if isinstance(x, Mapping):
        model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()})
    elif isinstance(x, torch.Tensor):
        model(x.to(device))
    else:
        raise BlockError(f"calibration batches are token tensors [B, T], (x, y) pairs or dicts "
                         f"of model inputs, got {type(x).__name__}")


@contextmanager
def no_cache(model: nn.Module):
    """Hugging Face models: ``config.use_cache`` False for the duration (no cache is built)."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if previous is not None:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if previous is not None:
            config.use_cache = previous  # type: ignore[union-attr]


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, batches: Iterable, *,
                         device: torch.device | str, max_batches: int | None = None
                         ) -> list[BlockInput]:
    """The inputs ``block`` receives on every calibration batch, the forward pass stopped
    at ``block`` (which does not run, nor anything after it).

    Args:
        model: the model the batches are fed to (in eval mode: the caller's business).
        block: its first block.
        batches: token tensors ``[B, T]``, ``(x, y)`` pairs (``y`` ignored) or dicts of
            keyword inputs.
        device: where the batches go and the captured inputs stay.
        max_batches: at most this many batches (None: all).

    Returns:
        One :class:`BlockInput` per batch (tensors detached, caches dropped, ``use_cache``
        False).

    Raises:
        BlockError: no batch, a batch of an unknown kind, or a batch on which ``block`` was
            never called.
    """
    captured: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = _detached(kwargs, device)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append(BlockInput(_detached(args, device), kwargs))
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with no_cache(model):
            for step, batch in enumerate(islice(batches, max_batches)):
                try:
                    call_model(model, model_input(batch), device)
                except _Captured:
                    pass
                if len(captured) != step + 1:
                    raise BlockError(f"calibration batch {step} ran through the model without "
                                     "calling its first block: check the blocks (pattern=) "
                                     "and that the model uses them")
    finally:
        handle.remove()
    if not captured:
        raise BlockError("no calibration batch: the batches are empty")
    return captured


def block_output(output: Any) -> torch.Tensor:
    """The hidden state a block returns: the tensor itself, or the first item of a tuple or
    of a Hugging Face ``ModelOutput``.

    Raises:
        BlockError: nothing tensor-like comes first.
    """
    if isinstance(output, torch.Tensor):
        return output
    try:
        first = output[0]
    except (TypeError, IndexError, KeyError):
        first = None
    if not isinstance(first, torch.Tensor):
        raise BlockError(f"a block returned {type(output).__name__}: the engine feeds the next "
                         "block a block's output tensor, or the first item of what it returns")
    return first


def run_block(block: nn.Module, block_input: BlockInput) -> torch.Tensor:
    """``block``'s hidden-state output on one cached input."""
    return block_output(block(*block_input.args, **block_input.kwargs))
