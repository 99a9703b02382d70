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
    "CollapseWarning",
    "collapsed_layers",
    "OPEN_ROWS_FLOOR",
    "open_rows_floor",
]

#: a layer whose weights survive in fewer than this share of its output rows (channels,
#: neurons) is reported as collapsing: too few paths stay open through it
OPEN_ROWS_FLOOR = 0.5


def open_rows_floor(structure: str) -> float:
    """The open-row share below which a layer of ``structure`` counts as collapsing: whole
    filters, channels or units removed leave rows empty by design, so there only a layer
    with no weight is a collapse."""
    return OPEN_ROWS_FLOOR if structure in ("unstructured", "nm") else 0.0


class CollapseWarning(UserWarning):
    """A projection left a layer with no weight, or with weights in too few output rows."""


@torch.no_grad()
def apply_masks(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """Set every masked-out entry to exactly 0 in place, whatever it held (NaN and inf
    included: a multiplication by the mask would keep them)."""
    for p, m in zip(params, masks, strict=True):
        p.masked_fill_(~m.to(device=p.device, dtype=torch.bool), 0)


class MaskEnforcer:
    """Keeps pruned entries exactly zero inside any training loop.

    A gradient hook zeroes the gradient of pruned entries, so a fresh optimizer never
    builds momentum (Adam's exp_avg / exp_avg_sq) for them and decoupled weight decay
    has nothing to act on; ``enforce()`` re-zeroes the weights after the optimizer
    step as a guarantee against anything else that writes to them.

    Construction is all or nothing: masks are checked first, and if installing a hook
    fails the hooks installed so far are removed before the error propagates; the
    weights are zeroed only once everything is in place. Tensors that do not require
    gradients (frozen) get no hook (they receive no gradient); ``enforce()`` still
    zeroes them.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], masks: Sequence[torch.Tensor]):
        params, masks = list(params), list(masks)
        if len(params) != len(masks):
            raise ValueError(f"got {len(masks)} masks for {len(params)} tensors")
        checked = []
        for i, (p, m) in enumerate(zip(params, masks, strict=True)):
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask {i} has shape {tuple(m.shape)} but its tensor has "
                                 f"shape {tuple(p.shape)}")
            checked.append(m.to(device=p.device, dtype=torch.bool))
        self.params = params
        self.masks = checked
        # cached complements: enforce() runs after every optimizer step
        self._removed = [~m for m in checked]
        self._handles: list = []
        self.capture = False
        self.captured: list[torch.Tensor | None] = [None] * len(params)
        try:
            for i, p in enumerate(params):
                if p.requires_grad:
                    self._handles.append(p.register_hook(self._make_hook(i)))
        except BaseException:
            self.remove()
            raise
        _zero(self.params, self._removed)

    def _make_hook(self, index: int):
        removed = self._removed[index]

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if self.capture:
                before = self.captured[index]
                self.captured[index] = grad.detach().clone() if before is None \
                    else before + grad.detach()
            return grad.masked_fill(removed, 0)

        return hook

    def clear_captured(self) -> None:
        self.captured = [None] * len(self.params)

    def enforce(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        _zero(self.params, self._removed)
        if optimizer is not None:
            _zero_state(optimizer, self.params, self._removed)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@torch.no_grad()
def _zero(params: Sequence[torch.Tensor], removed: Sequence[torch.Tensor]) -> None:
    for p, r in zip(params, removed, strict=True):
        p.masked_fill_(r, 0)


@torch.no_grad()
def _zero_state(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                removed: Sequence[torch.Tensor]) -> None:
    for p, r in zip(params, removed, strict=True):
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.masked_fill_(r.to(value.device), 0)


def zero_optimizer_state(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
) -> None:
    """Set per-parameter optimizer buffers (momentum, Adam moments) to exactly 0 at pruned
    entries, whatever they held."""
    _zero_state(optimizer, params, [~m.to(dtype=torch.bool) for m in masks])


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    total: int
    kept: int
    rows: int = 0  # output rows (channels, neurons) of the tensor
    open_rows: int = 0  # rows that keep at least one weight

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0

    @classmethod
    def from_dict(cls, record: dict) -> LayerSparsity:
        """The inverse of :meth:`as_dict` (records written before rows were counted read
        with 0 rows)."""
        return cls(record["name"], tuple(record["shape"]), record["total"], record["kept"],
                   record.get("rows", 0), record.get("open_rows", 0))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["kept_fraction"] = self.kept_fraction
        return out


def sparsity_report(
    names: Sequence[str], tensors: Sequence[torch.Tensor],
    out_axes: Sequence[int] | None = None,
) -> list[LayerSparsity]:
    """Per-tensor counts of non-zero entries and of output rows that keep any (works on
    weights or boolean masks). ``out_axes``: each tensor's output axis (default 0; 1 for a
    weight stored [in, out])."""
    axes = list(out_axes) if out_axes is not None else [0] * len(names)
    report = []
    for n, t, axis in zip(names, tensors, axes, strict=True):
        nonzero = t.detach() != 0
        rows = t.shape[axis] if t.dim() else 1
        open_rows = int(nonzero.movedim(axis, 0).reshape(rows, -1).any(1).sum()) \
            if t.dim() else int(nonzero)
        report.append(LayerSparsity(name=n, shape=tuple(t.shape), total=t.numel(),
                                    kept=int(nonzero.sum()), rows=rows, open_rows=open_rows))
    return report


def collapsed_layers(report: Sequence[LayerSparsity], floor: float = OPEN_ROWS_FLOOR
                     ) -> list[tuple[str, str]]:
    """``(layer, why)`` for every layer of ``report`` that keeps no weight, or keeps weights
    in fewer than ``floor`` of its output rows (no or few paths stay open through it)."""
    found = []
    for r in report:
        if r.total and r.kept == 0:
            found.append((r.name, "keeps no weight: nothing passes through it"))
        elif r.rows and r.open_rows < floor * r.rows:
            found.append((r.name, f"keeps weights in {r.open_rows} of its {r.rows} output "
                                  f"rows ({r.kept} of {r.total} weights)"))
    return found


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
