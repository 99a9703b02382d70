"""Which tensors of a model are pruned: Conv/Linear weights, filtered by module-name patterns."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

__all__ = ["PRUNABLE_TYPES", "SelectionError", "prunable_parameters"]

# Weights of these modules are pruned by default; biases and norm layers never are.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


class SelectionError(ValueError):
    """The include/exclude patterns leave nothing to prune, or name nothing."""


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every Conv/Linear module, in ``named_modules`` order.

    ``include`` / ``exclude`` are shell-style patterns on module names (``"features.*"``,
    ``"fc2"``); a module is kept if it matches some include pattern (all do when
    ``include`` is empty) and no exclude pattern.
    """
    include = list(include or [])
    exclude = list(exclude or [])
    selected = []
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        candidates.append(name)
        if include and not _matches(name, include):
            continue
        if _matches(name, exclude):
            continue
        selected.append((f"{name}.weight", weight))
    if not selected:
        found = ", ".join(candidates) if candidates else "none"
        raise SelectionError(
            "no prunable tensor: the model has no Conv/Linear weight left after "
            f"include={include} exclude={exclude} (Conv/Linear modules found: {found})"
        )
    for pattern in include + exclude:
        if not any(fnmatchcase(c, pattern) for c in candidates):
            raise SelectionError(
                f"pattern {pattern!r} matches no Conv/Linear module; modules are: "
                + ", ".join(candidates)
            )
    return selected
