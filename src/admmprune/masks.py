"""Hard pruning: applying masks, keeping pruned entries at zero, sparsity reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "apply_masks",
    "MaskEnforcer",
    "zero_optimizer_state",
    "LayerSparsity",
    "sparsity_report",
    "global_sparsity",
]


@torch.no_grad()
def apply_masks(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Zero every masked-out entry in place."""
    for p, m in zip(params, masks, strict=True):
        p.mul_(m.to(p.dtype))


class MaskEnforcer:
    """Keeps pruned entries exactly zero inside any training loop.

    A gradient hook zeroes the gradient of pruned entries, so a fresh optimizer never
    builds momentum (Adam's exp_avg / exp_avg_sq) for them and decoupled weight decay
    has nothing to act on; ``enforce()`` re-zeroes the weights after the optimizer
    step as a guarantee against anything else that writes to them.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], masks: Sequence[torch.Tensor]):
        self.params = list(params)
        self.masks = [m.to(device=p.device, dtype=torch.bool) for p, m in
                      zip(self.params, masks, strict=True)]
        self._handles = [
            p.register_hook(self._make_hook(m)) for p, m in zip(self.params, self.masks,
                                                               strict=True)
        ]
        apply_masks(self.params, self.masks)

    @staticmethod
    def _make_hook(mask: torch.Tensor):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad * mask.to(grad.dtype)

        return hook

    def enforce(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        apply_masks(self.params, self.masks)
        if optimizer is not None:
            zero_optimizer_state(optimizer, self.params, self.masks)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@torch.no_grad()
def zero_optimizer_state(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
) -> None:
    """Zero per-parameter optimizer buffers (momentum, Adam moments) at pruned entries."""
    for p, m in zip(params, masks, strict=True):
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.mul_(m.to(value.dtype))


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    total: int
    kept: int

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["kept_fraction"] = self.kept_fraction
        return out


def sparsity_report(
    names: Sequence[str], tensors: Sequence[torch.Tensor]
) -> list[LayerSparsity]:
    """Per-tensor counts of non-zero entries (works on weights or boolean masks)."""
    return [
        LayerSparsity(name=n, shape=tuple(t.shape), total=t.numel(), kept=int(t.count_nonzero()))
        for n, t in zip(names, tensors, strict=True)
    ]


def global_sparsity(report: Sequence[LayerSparsity]) -> dict:
    """Totals over a report: N, kept K, removed share in percent and compression N/K."""
    total = sum(r.total for r in report)
    kept = sum(r.kept for r in report)
    return {
        "total": total,
        "kept": kept,
        "sparsity_percent": 100.0 * (total - kept) / total if total else 0.0,
        "compression": total / kept if kept else float("inf"),
    }
