"""How much each layer keeps: one removal percent for every layer, a percent per layer
(``{layer name: percent}``, e.g. from a global or OWL allocation), or N:M for every layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..projection import ProjectionError, survivor_count, validate_nm
from .errors import OneShotError

__all__ = ["Budget", "layer_budgets"]


class Budget(NamedTuple):
    """One layer's target: ``all_percent`` of its weights removed, or ``nm = (N, M)``."""

    all_percent: float | None = None
    nm: tuple[int, int] | None = None


def _module_name(name: str) -> str:
    return name.rpartition(".")[0]


def layer_budgets(layers: Sequence[tuple[str, int]],
                  all_percent: float | Mapping[str, float] | None = None,
                  nm: tuple[int, int] | None = None) -> dict[str, Budget]:
    """Every layer's :class:`Budget`, checked before any work starts.

    Args:
        layers: ``(weight name, number of weights)`` of every pruned layer.
        all_percent: the share removed from every layer (percent), or a dict from layer name
            to percent covering every layer; a name is the weight's (``"...q_proj.weight"``)
            or its module's (``"...q_proj"``).
        nm: ``(N, M)`` for every layer; exactly one of ``all_percent`` and ``nm``.

    Returns:
        ``{weight name: Budget}``.

    Raises:
        OneShotError: both or neither given; a dict that names an unknown layer, misses one,
            or names one twice; a percent outside [0, 100) or one that empties a layer; a bad
            N:M.
    """
    if (all_percent is None) == (nm is None):
        raise OneShotError("give exactly one of all_percent (a percent, or a dict of percents "
                           "per layer) and nm=(N, M)")
    if isinstance(all_percent, Mapping):
        return _per_layer(layers, all_percent)
    try:
        if nm is not None:
            n, m = nm
            validate_nm(n, m)
            return {name: Budget(nm=(n, m)) for name, _ in layers}
        percent = float(all_percent)  # type: ignore[arg-type]  # not None: checked above
        for _, size in layers:
            survivor_count(size, percent)
    except (ProjectionError, TypeError, ValueError) as err:
        raise OneShotError(f"bad pruning target: {err}") from None
    return {name: Budget(all_percent=percent) for name, _ in layers}


def _per_layer(layers: Sequence[tuple[str, int]], percents: Mapping[str, float]
               ) -> dict[str, Budget]:
    by_key: dict[str, str] = {}
    for name, _ in layers:
        by_key[name] = name
        by_key[_module_name(name)] = name
    chosen: dict[str, float] = {}
    unknown: list[str] = []
    for key, percent in percents.items():
        found = by_key.get(key)
        if found is None:
            unknown.append(key)
        elif found in chosen:
            raise OneShotError(f"layer {found} has two ratios (named as {found!r} and as its "
                               "module); give one")
        else:
            chosen[found] = percent
    if unknown:
        raise OneShotError(f"per-layer ratios name layers that are not pruned here: "
                           f"{unknown[:5]} (pruned layers: {[n for n, _ in layers][:5]}, ...)")
    missing = [name for name, _ in layers if name not in chosen]
    if missing:
        raise OneShotError(f"per-layer ratios miss {len(missing)} pruned layers, e.g. "
                           f"{missing[:5]}: give every layer a percent (0 keeps it dense) or "
                           "exclude it")
    budgets = {}
    for name, size in layers:
        try:
            survivor_count(size, chosen[name])
        except ProjectionError as err:
            raise OneShotError(f"{name}: {err}") from None
        budgets[name] = Budget(all_percent=float(chosen[name]))
    return budgets
