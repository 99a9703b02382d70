"""Mask refinement during the final retraining: drop the weakest kept weights, grow new ones.

ADMM chooses the survivors once, at the last hard prune, from weights trained towards a
sparse Z; after that the mask is fixed. At a few hundred kept weights per layer a handful of
poor choices matter, and the retraining can see them: a removed connection whose loss
gradient is large would be worth more than a kept one that has shrunk towards zero. Every
``every`` optimizer steps, each layer swaps its ``n = fraction · kept`` smallest kept weights
for the ``n`` removed entries with the largest dense gradient (RigL, Evci et al. 2020); new
weights start at zero. Each layer keeps its count, so the per-layer shares the global
ADMM found stay as they are, and so does the compression. The fraction decays along a
half cosine to zero at ``until`` of the retraining, which then finishes on a fixed mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the pruner imports this module
    from .pruner import ADMMPruner

__all__ = ["drop_and_grow", "swap_fraction", "MaskRefiner"]


@torch.no_grad()
def drop_and_grow(weights: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor],
                  masks: Sequence[torch.Tensor], fraction: float) -> list[torch.Tensor]:
    """New masks: in each tensor, ``floor(fraction · kept)`` kept entries of smallest
    ``|weight|`` are removed and as many entries outside the remaining mask with the
    largest ``|gradient|`` are kept instead (a dropped entry may come straight back).
    Every mask keeps its number of kept entries."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    out = []
    for w, g, m in zip(weights, gradients, masks, strict=True):
        if w.shape != m.shape or g.shape != m.shape:
            raise ValueError(f"weight {tuple(w.shape)}, gradient {tuple(g.shape)} and mask "
                             f"{tuple(m.shape)} shapes differ")
        m = m.to(torch.bool)
        kept = int(m.count_nonzero())
        n = min(int(fraction * kept), m.numel() - kept)
        if n == 0:
            out.append(m.clone())
            continue
        flat_mask = m.flatten().clone()
        # kept entries rank by magnitude, removed ones rank above every kept one
        drop_score = w.detach().abs().flatten().float().masked_fill(~flat_mask, math.inf)
        flat_mask[torch.topk(drop_score, n, largest=False).indices] = False
        grow_score = g.detach().abs().flatten().float().masked_fill(flat_mask, -math.inf)
        flat_mask[torch.topk(grow_score, n).indices] = True
        out.append(flat_mask.view_as(m))
    return out


def swap_fraction(initial: float, progress: float, until: float) -> float:
    """The share swapped at ``progress`` in [0, 1] of the retraining: ``initial`` decayed
    along a half cosine to 0 at ``until``, 0 after it."""
    if progress >= until:
        return 0.0
    return initial * 0.5 * (1.0 + math.cos(math.pi * progress / until))


class MaskRefiner:
    """Drives :func:`drop_and_grow` from a training loop: call ``after_step(optimizer)``
    after every optimizer step. ``pruner`` is a hard-pruned :class:`~admmprune.pruner.ADMMPruner`;
    ``step`` counts optimizer steps of a retraining of ``total_steps`` (a resumed one starts
    at the steps already done)."""

    def __init__(self, pruner: ADMMPruner, fraction: float, every: int, until: float,
                 total_steps: int, step: int = 0) -> None:
        if every < 1 or total_steps < 1:
            raise ValueError(f"every ({every}) and total_steps ({total_steps}) must be >= 1")
        self.pruner, self.fraction, self.every, self.until = pruner, fraction, every, until
        self.total_steps, self.step = total_steps, step
        self.swapped = 0  # entries moved in by this refiner, for the log
        self._watch()

    def _active(self) -> bool:
        return self.fraction > 0 and self.step / self.total_steps < self.until

    def _watch(self) -> None:
        # the dense gradient is kept only for the step just before an update
        self.pruner.capture_gradients((self.step + 1) % self.every == 0 and self._active())

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.step += 1
        if self.step % self.every == 0 and self._active():
            fraction = swap_fraction(self.fraction, self.step / self.total_steps, self.until)
            self.swapped += self.pruner.refine_masks(fraction, optimizer)
        self._watch()

    def close(self) -> None:
        self.pruner.capture_gradients(False)
