"""The ``units`` projection: whole groups that span several tensors survive or go together.

A transformer's MLP neuron is a row of its up (and gate) projection and the matching column of
its down projection; an attention group is a key-value head with its query heads: rows of q, k
and v and columns of the output projection. Removing one means zeroing all of its entries in
every tensor at once, so a family of units is described by its members: for each tensor it
touches, the axis and the indices of every unit along it (``UnitFamily``).

Budget rule: that of ``projection.group_masks`` with each family in the place of a layer:
units are ranked by ``options.group_score`` of all their entries together (``l2``: their RMS,
so a unit's score does not grow with its size and units of different sizes compare), every
family keeps its best unit, then units are taken down the ranking until the kept weights
reach ``keep``: ``kept >= keep`` and ``kept - keep`` is less than the largest unit. Scores
computed outside (``options.unit_scores``: the ``output`` score of ``unit_contribution``,
which reads the model) take the place of ``group_score``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .projection import (
    GROUP_SCORES,
    NOT_FINITE,
    ProjectionError,
    StructureOptions,
    check_percent,
    select_groups,
)

__all__ = ["UnitFamily", "unit_masks", "unit_rows", "member_entries", "family_percents"]


@dataclass(frozen=True)
class UnitFamily:
    """``count`` units of one kind in one place (e.g. block 2's MLP neurons).

    ``members``: one ``(tensor index, axis, index)`` per tensor the units touch; ``index`` is
    an int64 tensor [count, width]: unit u owns the slices ``index[u]`` of that tensor along
    ``axis`` (0: rows, 1: columns of the tensor as stored). The last member is the
    projection through which the units write their output (a block's down or output
    projection): the ``output`` score reads it.
    """

    name: str
    count: int
    members: tuple[tuple[int, int, torch.Tensor], ...]

    def unit_size(self, values: Sequence[torch.Tensor]) -> int:
        """Entries of one unit over all its members."""
        size = 0
        for tensor, axis, index in self.members:
            shape = values[tensor].shape
            size += index.shape[1] * (values[tensor].numel() // shape[axis])
        return size

    @property
    def output(self) -> tuple[int, int, torch.Tensor]:
        """The member through which the units write their output (the last one)."""
        return self.members[-1]


def member_entries(w: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """[count, entries]: each unit's entries of ``w`` along ``axis``; for ``axis`` 1, unit u's
    row is its columns of ``w`` transposed, flattened ([width, rows, ...])."""
    count = index.shape[0]
    picked = w.index_select(axis, index.reshape(-1).to(w.device))
    if axis == 0:
        return picked.reshape(count, -1)
    # [rows, count * width, ...] -> [count, rows * width * ...]
    moved = picked.movedim(1, 0).reshape(count, index.shape[1], -1)
    return moved.reshape(count, -1)


def unit_rows(values: Sequence[torch.Tensor], family: UnitFamily) -> torch.Tensor:
    """Every unit of ``family`` as one row of all its entries, [count, unit size]."""
    return torch.cat([member_entries(values[t], axis, index) for t, axis, index in family.members],
                     dim=1)


def _check_cover(values: Sequence[torch.Tensor], families: Sequence[UnitFamily]) -> None:
    members = {t for f in families for t, _, _ in f.members}
    missing = [i for i in range(len(values)) if i not in members]
    if missing:
        raise ProjectionError(f"structure 'units': tensors {missing[:5]} belong to no unit "
                              "family; every pruned tensor must be part of one")


def family_percents(percents: float | Sequence[float], families: Sequence[UnitFamily],
                    tensors: int) -> list[float]:
    """One removal percent per family from per-tensor ``percents``: the members of a family
    must agree (a unit goes from all of them at once)."""
    if isinstance(percents, (int, float)):
        percents = [float(percents)] * tensors
    if len(percents) != tensors:
        raise ProjectionError(f"got {len(percents)} per-layer ratios for {tensors} prunable "
                              "tensors")
    out = []
    for family in families:
        own = {float(percents[t]) for t, _, _ in family.members}
        if len(own) != 1:
            raise ProjectionError(f"{family.name}: its tensors have different ratios "
                                  f"{sorted(own)}; a unit leaves all of them at once, so give "
                                  "them one ratio")
        percent = own.pop()
        check_percent(percent)
        out.append(percent)
    return out


def unit_masks(values: Sequence[torch.Tensor], keep: int | None,
               percents: float | Sequence[float] | None,
               allowed: Sequence[torch.Tensor] | None,
               options: StructureOptions) -> list[torch.Tensor]:
    """Whole units of ``options.units`` survive (budget rule in the module docstring).

    Layer-wise (``percents``): each family removes its members' ratio of its units (they must
    agree) and keeps at least one. Units with no allowed entry score -1 (never chosen again
    while others remain); the masks are intersected with ``allowed``.

    Raises:
        ProjectionError: no families, a tensor in none, an unknown group score, non-finite
            values, or an impossible budget.
    """
    families: Sequence[UnitFamily] = options.units
    if not values:
        raise ProjectionError("no tensors to project")
    if not families:
        raise ProjectionError("structure 'units' needs the unit families (StructureOptions."
                              "units); the pruner finds them in a transformer's blocks")
    _check_cover(values, families)
    given = options.unit_scores
    if given and len(given) != len(families):
        raise ProjectionError(f"got unit scores for {len(given)} families, there are "
                              f"{len(families)}")
    if not given and options.group_score not in GROUP_SCORES:
        raise ProjectionError(f"unknown group score {options.group_score!r}; choose one of "
                              f"{sorted(GROUP_SCORES)}")
    detached = [v.detach() for v in values]
    scores, sizes = [], []
    for number, family in enumerate(families):
        if given:
            score = given[number].to(torch.float64)
            if score.shape != (family.count,):
                raise ProjectionError(f"{family.name}: {tuple(score.shape)} unit scores for "
                                      f"{family.count} units")
        else:
            score = GROUP_SCORES[options.group_score](unit_rows(detached, family))
        if not bool(torch.isfinite(score).all()):
            raise ProjectionError(NOT_FINITE)
        if allowed is not None:
            alive = unit_rows(allowed, family).any(1).to(score.device)
            score = torch.where(alive, score, -1.0)
        scores.append(score.cpu())
        sizes.append(family.unit_size(values))
    if percents is None:
        total = sum(v.numel() for v in values)
        if keep is None or not 0 <= keep <= total:
            raise ProjectionError(f"cannot keep {keep} of {total} entries")
        chosen = select_groups(scores, sizes, keep)
    else:
        ratios = family_percents(percents, families, len(values))
        # budgets in units here: every unit of a family has the same size
        chosen = [select_groups([s], [1], f.count - round(p * f.count / 100.0))[0]
                  for s, f, p in zip(scores, families, ratios, strict=True)]
    masks = [torch.zeros(v.shape, dtype=torch.bool, device=v.device) for v in values]
    for family, kept in zip(families, chosen, strict=True):
        for tensor, axis, index in family.members:
            slices = index[kept].reshape(-1).to(masks[tensor].device)
            masks[tensor].index_fill_(axis, slices, True)
    if allowed is not None:
        masks = [m & a.to(m.device, torch.bool) for m, a in zip(masks, allowed, strict=True)]
    return masks
