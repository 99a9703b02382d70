"""Per-layer input statistics of a block, summed over its cached calibration inputs with
forward pre-hooks: nothing but the running sums is kept.

- ``"gram"``: ``XᵀX`` in float64 (SparseGPT's and ADMM's reconstruction Hessian, up to 2);
- ``"norms"``: ``‖X_j‖₂`` per input feature, the squares summed in float64 (Wanda's).

``X`` is a layer's first input as ``[tokens, features]``. :func:`forward_groups` orders a
block's layers the way its forward pass calls them, layers that read the same input tensor
in one group (attention q/k/v; MLP gate/up), for sequential calibration inside a block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import BlockError, OneShotError
from .inputs import BlockInput

__all__ = ["STATISTICS", "gram", "square_sums", "gather_statistics", "forward_groups"]

STATISTICS = ("gram", "norms")


def gram(x: torch.Tensor) -> torch.Tensor:
    """``XᵀX`` (float64) of ``x`` as ``[tokens, features]`` (its last axis: features)."""
    rows = x.detach().reshape(-1, x.shape[-1]).double()
    return rows.t() @ rows


def square_sums(x: torch.Tensor) -> torch.Tensor:
    """``Σ_tokens x_j²`` (float64) per feature j of ``x`` (its last axis: features)."""
    return x.detach().reshape(-1, x.shape[-1]).double().pow(2).sum(0)


_TERMS = {"gram": gram, "norms": square_sums}


class _Enough(Exception):
    """Raised by a hook once every layer of the group has seen this input: the rest of the
    block need not run."""


def _check(statistic: str) -> None:
    if statistic not in _TERMS:
        raise OneShotError(f"unknown statistic {statistic!r}: a method asks for one of "
                           f"{', '.join(STATISTICS)} (or None)")


@torch.no_grad()
def gather_statistics(block: nn.Module, modules: Sequence[nn.Module],
                      inputs: Sequence[BlockInput], statistic: str,
                      calls_per_input: int | None = None) -> list[torch.Tensor]:
    """``statistic`` of every module's inputs, summed over ``block`` run on every cached input.

    Args:
        block: the block (its outputs are not used).
        modules: layers inside it whose first input is ``[..., features]``.
        inputs: the block's cached calibration inputs.
        statistic: ``"gram"`` or ``"norms"``.
        calls_per_input: how many times the modules are called together in one forward
            pass of the block (from :func:`forward_groups`): the pass stops after the last
            of them, skipping the rest of the block. None: the block runs to its end.

    Returns:
        One float64 tensor per module (``XᵀX``; or ``‖X_j‖₂``), on the inputs' device.

    Raises:
        OneShotError: an unknown statistic. BlockError: a module never called.
    """
    _check(statistic)
    term = _TERMS[statistic]
    sums: list[torch.Tensor | None] = [None] * len(modules)
    calls = [0]

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            value = term(args[0])
            previous = sums[index]
            sums[index] = value if previous is None else previous + value
            calls[0] += 1
            if calls_per_input is not None and calls[0] >= calls_per_input:
                raise _Enough
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        for block_input in inputs:
            calls[0] = 0
            try:
                block(*block_input.args, **block_input.kwargs)
            except _Enough:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, s in enumerate(sums) if s is None]
    if missing:
        raise BlockError(f"layers {missing} of the block were never called on its inputs: "
                         "exclude them or name blocks that use them")
    found = [s for s in sums if s is not None]
    return [s.sqrt() for s in found] if statistic == "norms" else found


@torch.no_grad()
def forward_groups(block: nn.Module, modules: Sequence[nn.Module], block_input: BlockInput
                   ) -> tuple[list[list[int]], list[int]]:
    """``modules`` grouped in the order ``block`` calls them on one input.

    Layers that read the same input tensor (the same object) form one group; a group's
    place is its first layer's first call. A layer called several times belongs where it
    was first called.

    Args:
        block: the block.
        modules: layers inside it.
        block_input: one cached input to run it on.

    Returns:
        ``(groups, calls)``: lists of indices into ``modules`` in forward order, and how
        many times each module is called per forward pass.

    Raises:
        BlockError: a module the block never calls.
    """
    calls = [0] * len(modules)
    # the input tensors are held until the pass ends, so that identity is never reused
    readers: list[tuple[torch.Tensor, list[int]]] = []

    def hook_for(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            calls[index] += 1
            if calls[index] > 1:
                return
            x = args[0]
            for tensor, group in readers:
                if tensor is x:
                    group.append(index)
                    return
            readers.append((x, [index]))
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    try:
        block(*block_input.args, **block_input.kwargs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, c in enumerate(calls) if c == 0]
    if missing:
        raise BlockError(f"layers {missing} of the block were never called on its inputs: "
                         "exclude them or name blocks that use them")
    return [group for _, group in readers], calls
