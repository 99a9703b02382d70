"""A global top-K projection whose K counts live weights only.

At high ratios plain global top-K keeps weights that cannot change the network's output:
a weight of unit u is dead when no kept weight reads u's output (at 266.7x on LeNet-5, 64
of the 1,614 kept weights sit in fc1 rows whose fc2 columns are all pruned). They cost
budget and buy nothing. ``live_topk_masks`` drops them and gives their places to the
next-ranked weights that are live, so the masks hold exactly ``keep`` live weights.

Which columns read which units comes from ``admmprune.liveness.filter_readers`` (built
with ``strict=True``, so that a unit with any reader not understood there is never called
dead). Pure functions: tensors in, boolean masks out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .projection import ProjectionError, global_topk_masks

__all__ = ["live_masks", "live_topk_masks"]

Readers = Sequence[Sequence[tuple[int, torch.Tensor, torch.Tensor]]]


def _columns_used(mask: torch.Tensor) -> torch.Tensor:
    """Which input columns (dim 1) of a Conv/Linear weight mask hold a kept entry."""
    return mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=2).any(dim=0)


def _dead_units(masks: Sequence[torch.Tensor], readers: Readers) -> list[torch.Tensor | None]:
    """Per tensor, its output units that no kept column reads (None: units of a tensor with
    no mapped readers are never dead; they may feed the model's output)."""
    read: list[torch.Tensor | None] = [None] * len(masks)
    for j, entries in enumerate(readers):
        if not entries:
            continue
        used = _columns_used(masks[j])
        for i, columns, units in entries:
            if read[i] is None:
                read[i] = torch.zeros(masks[i].shape[0], dtype=torch.bool, device=used.device)
            columns, units = columns.to(used.device), units.to(used.device)
            read[i][units[used[columns]]] = True
    return [None if r is None else ~r for r in read]


def live_masks(masks: Sequence[torch.Tensor], readers: Readers
               ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """(masks without their dead weights, dead units per tensor). A unit is dead when no
    kept weight reads it; its weights go, which can leave the units it read unread too,
    so this repeats until nothing changes."""
    if len(readers) != len(masks):
        raise ProjectionError(f"got readers for {len(readers)} tensors, not {len(masks)}")
    live = [m.clone() for m in masks]
    while True:
        dead = _dead_units(live, readers)
        changed = False
        for mask, units in zip(live, dead, strict=True):
            if units is not None and bool(mask[units].any()):
                mask[units] = False
                changed = True
        if not changed:
            return live, dead


def _count(masks: Sequence[torch.Tensor]) -> int:
    return sum(int(m.count_nonzero()) for m in masks)


def _safe_additions(live: Sequence[torch.Tensor], dead: Sequence[torch.Tensor | None]
                    ) -> list[torch.Tensor]:
    """Entries that would add exactly one live weight: not kept and in a live unit's row.
    A unit such an entry starts to read had its weights dropped already, so nothing else
    comes back to life with it."""
    out = []
    for mask, units in zip(live, dead, strict=True):
        ok = ~mask
        if units is not None:
            ok = ok & ~units.view(-1, *([1] * (mask.dim() - 1)))
        out.append(ok)
    return out


def live_topk_masks(scores: Sequence[torch.Tensor], keep: int, readers: Readers,
                    allowed: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Masks of at most ``keep`` (and, unless too few entries are live or allowed,
    exactly ``keep``) live entries, chosen by score.

    The largest budget K' whose top-K' by score holds at most ``keep`` live weights is
    found by bisection (live weights never decrease as K' grows: a weight more can only
    give a unit a reader); its dead weights are dropped, and the shortfall is filled with
    the best-scored entries that add one live weight each. Entries outside ``allowed``
    are never chosen.
    """
    total = sum(s.numel() for s in scores)
    if not 0 <= keep <= total:
        raise ProjectionError(f"cannot keep {keep} of {total} entries")

    def permitted(masks):
        if allowed is None:
            return masks
        return [m & a.to(m.device, torch.bool) for m, a in zip(masks, allowed, strict=True)]

    def live_at(budget: int):
        # a forbidden entry must not keep the unit it reads alive: fence before counting
        return live_masks(permitted(global_topk_masks(scores, budget)), readers)

    low, high = keep, total
    best = live_at(low)
    while low < high:
        middle = (low + high + 1) // 2
        attempt = live_at(middle)
        if _count(attempt[0]) <= keep:
            low, best = middle, attempt
        else:
            high = middle - 1
    live, dead = best
    short = keep - _count(live)
    if short <= 0:
        return live
    candidates = permitted(_safe_additions(live, dead))
    available = _count(candidates)
    if available == 0:
        return live
    # candidates keep their scores; everything else ranks below any of them
    floor = min(float(s.min()) for s in scores) - 1.0
    ranked = [torch.where(c, s, torch.full_like(s, floor)) for s, c in
              zip(scores, candidates, strict=True)]
    extra = global_topk_masks(ranked, min(short, available))
    return [m | (e & c) for m, e, c in zip(live, extra, candidates, strict=True)]
