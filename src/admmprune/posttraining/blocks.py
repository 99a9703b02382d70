"""A model's sequence of transformer blocks: the units the engine prunes one at a time.

Found from Hugging Face's ``_no_split_modules`` (the classes transformers never splits across
devices: its decoder layers) when the model or one of its submodules declares them, else as
the longest ``nn.ModuleList`` whose entries are all of one class; a user's ``pattern`` names
the blocks of any ``nn.Module``. Blocks are returned in ``named_modules`` order, which the
engine takes as the order of the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from .errors import BlockError

__all__ = ["find_blocks"]

_SHOWN = 12  # module names quoted in an error message


def _outermost(found: Iterable[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop every module that lies inside another one found (a block's own submodules)."""
    kept: list[tuple[str, nn.Module]] = []
    for name, module in found:
        if not any(name.startswith(outer + ".") for outer, _ in kept):
            kept.append((name, module))
    return kept


def _no_split_classes(model: nn.Module) -> set[str]:
    classes: set[str] = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if isinstance(declared, (list, tuple, set, frozenset)):
            classes.update(c for c in declared if isinstance(c, str))
    return classes


def _longest_uniform_list(model: nn.Module) -> list[tuple[str, nn.Module]]:
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) <= len(best):
            continue
        if len({type(child) for child in module}) == 1:
            prefix = f"{name}." if name else ""
            best = [(f"{prefix}{i}", child) for i, child in enumerate(module)]
    return best


def find_blocks(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Module]]:
    """The model's blocks as ``(name, module)``, in forward order.

    Args:
        model: any ``nn.Module`` (a Hugging Face causal LM, the registered ``gpt`` and
            ``llama``, or a user's model with ``pattern``).
        pattern: a shell-style pattern (``fnmatch``) over module names, e.g. ``"layers.*"``:
            the outermost modules it matches are the blocks. None: the classes named by
            Hugging Face's ``_no_split_modules``, else the longest ``nn.ModuleList`` whose
            entries are all of one class.

    Returns:
        ``(name, module)`` of every block, in ``named_modules`` order.

    Raises:
        BlockError: ``pattern`` matches no module, or no blocks are recognised.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    if pattern is not None:
        blocks = _outermost((n, m) for n, m in named if fnmatchcase(n, pattern))
        if not blocks:
            shown = ", ".join(n for n, _ in named[:_SHOWN])
            raise BlockError(f"block pattern {pattern!r} matches no module of "
                             f"{type(model).__name__} (its modules: {shown}, ...); name the "
                             "blocks with a pattern over these names, e.g. 'layers.*'")
        return blocks
    classes = _no_split_classes(model)
    blocks = _outermost((n, m) for n, m in named if type(m).__name__ in classes)
    if not blocks:
        blocks = _longest_uniform_list(model)
    if not blocks:
        raise BlockError(f"no transformer blocks recognised in {type(model).__name__} (no "
                         "_no_split_modules and no nn.ModuleList of one class): pass a "
                         "pattern naming them, e.g. pattern='layers.*'")
    return blocks
